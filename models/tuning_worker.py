"""A tuning worker process: `python -m models.tuning_worker JOB INDEX`, started by `models.tuning.run_study_in_workers`.

JOB is the pickled `WorkerJob` (the study's name, its objective with its data, the tuning budget);
the storage URL comes from the environment (`CUSTINTEL_STUDY_STORAGE`), never the command line, so
a password in it does not show in the process list. The worker runs trials on the shared study until
it holds the requested number of complete trials (see `models.tuning.work_on_study`). Exit codes: 0
done, 1 an expected error (one line on stderr), anything else a bug.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from pathlib import Path

from models.tuning import STORAGE_ENV, StudyStorageError, WorkerJob, load_worker_study, work_on_study


def main(argv: list[str]) -> int:
    """Run one worker; its exit code."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    log = logging.getLogger("custintel.models")
    if len(argv) != 2 or not argv[1].isdigit():
        log.error("usage: python -m models.tuning_worker JOB INDEX")
        return 1
    url = os.environ.get(STORAGE_ENV)
    if not url:
        log.error("%s is not set: the worker does not know the study storage", STORAGE_ENV)
        return 1
    index = int(argv[1])
    with Path(argv[0]).open("rb") as handle:
        job = pickle.load(handle)  # noqa: S301 - written by the parent process, in a folder only this user reads
    assert isinstance(job, WorkerJob)
    label = f"{job.label} worker {index}"
    try:
        study = load_worker_study(url, job, index)
    except StudyStorageError as err:
        log.error("%s: %s", label, err)
        return 1
    outcomes = work_on_study(study, job.objective, job.tuning, label)
    done = ", ".join(f"{n} {state.lower()}" for state, n in sorted(outcomes.items())) or "no trial"
    log.info("%s (pid %d): %s", label, os.getpid(), done)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
