"""The experiments the decision service assigns customers to, kept fresh from the registry.

`ExperimentSource` reads the launched experiments from `<home>/experiments` (`experiments.spec.
ExperimentRegistry`) and keeps an `experiments.assignment.Assigner` over them, with the settings'
global holdout (`CUSTINTEL_EXPERIMENTS_HOLDOUT`). It looks again at most every
`serving_poll_seconds` (as the decision policy is polled), and only rebuilds when a registry file
changed. An experiment whose stored spec no longer matches its registered hash is left out (its
customers get the policy as it is) and said in `degraded`; the others keep running.

For each decided customer `Decider` asks `assign`: the arms they are in (exposures to log, the
`experiments` of the answer) and the actions those arms withhold from them, each with its reason
("experiment retention-offer arm control withholds retention_offer"). A customer in the global
holdout gets `holdout_decision`: the policy's fallback with probability 1 (no exploration), reason
"global holdout".
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from custintel.settings import Settings
from decisions.arbitration import Candidate, Decision
from decisions.policy import DecisionPolicy
from experiments.assignment import Assigner, Assignment
from experiments.errors import ExperimentError
from experiments.spec import ExperimentRegistry, RegisteredExperiment, experiments_root

log = logging.getLogger("custintel.serving")
HOLDOUT_REASON = "global holdout"


@dataclass(frozen=True)
class Placement:
    """One customer's experiments: the arms they are in and the actions those arms withhold (action -> reason)."""

    held_out: bool = False
    assignments: list[Assignment] = field(default_factory=list)
    withheld: dict[str, str] = field(default_factory=dict)

    def refs(self) -> list[dict[str, object]]:
        """The answer's `experiments`: experiment, version, arm per assignment."""
        return [{"experiment": a.experiment, "version": a.version, "arm": a.arm} for a in self.assignments]


def withholds(experiment: RegisteredExperiment, arm: str) -> dict[str, str]:
    """The actions an arm withholds, each with the reason its customers' decisions say."""
    spec = experiment.spec.arm(arm)
    return {a: f"experiment {experiment.name} arm {arm} withholds {a}" for a in spec.suppress}


class ExperimentSource:
    """The launched experiments and the assigner over them, re-read when the registry's files change."""

    def __init__(self, settings: Settings) -> None:
        self.root: Path = experiments_root(settings.home_dir)
        self.holdout_share = settings.experiments_holdout
        self.interval = settings.serving_poll_seconds
        # swapped together in one assignment, so a request never sees an assigner with another's experiments
        self._current: tuple[Assigner, dict[str, RegisteredExperiment]] = (Assigner([], holdout=self.holdout_share), {})
        self.degraded: str | None = None
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.refresh()

    def _files(self) -> tuple[tuple[str, int, int], ...]:
        """Name, mtime and size of every registry and spec file: a change in any means reading them again."""
        if not self.root.is_dir():
            return ()
        found = []
        for path in sorted(self.root.glob("*/registry.json")) + sorted(self.root.glob("*/v*.yaml")):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(found)

    def refresh(self) -> str | None:
        """Re-read the launched experiments when a file changed; returns what is now assigned (None: unchanged)."""
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._files()
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                launched, problems = ExperimentRegistry(self.root).launched()
                assigner = Assigner(launched, holdout=self.holdout_share)
            except (ExperimentError, OSError) as exc:  # keep assigning with what was loaded, say why
                self.degraded = f"experiments not reloaded: {exc}"[:500]
                log.warning(self.degraded)
                return None
            self.degraded = "; ".join(problems)[:500] or None
            if self.degraded:
                log.warning("experiments left out: %s", self.degraded)
            self._current = (assigner, {e.name: e for e in launched})
            return ", ".join(f"{e.name} v{e.version}" for e in launched) or "no experiment"

    @property
    def assigner(self) -> Assigner:
        """The assigner over the launched experiments as last read."""
        return self._current[0]

    @property
    def experiments(self) -> dict[str, RegisteredExperiment]:
        """The launched experiments as last read, by name."""
        return self._current[1]

    def current(self) -> tuple[Assigner, dict[str, RegisteredExperiment]]:
        """The assigner and its experiments, after a look at the registry when the last is older than the poll."""
        if time.monotonic() - self._checked >= self.interval:
            self.refresh()
        return self._current

    def place(self, keys: list[str]) -> dict[str, Placement]:
        """Each customer's placement: held out, or their arms and what those arms withhold."""
        assigner, experiments = self.current()
        out: dict[str, Placement] = {}
        for key in keys:
            if assigner.holdout(key):
                out[key] = Placement(held_out=True)
                continue
            assignments = assigner.assign(key) if assigner.experiments else []
            withheld: dict[str, str] = {}
            for a in assignments:
                experiment = experiments.get(a.experiment)
                if experiment is not None:
                    for action, reason in withholds(experiment, a.arm).items():
                        withheld.setdefault(action, reason)
            out[key] = Placement(False, assignments, withheld)
        return out


def holdout_decision(policy: DecisionPolicy, customer_key: str, channel: str, policy_version: str | None) -> Decision:
    """A held-out customer's decision: the policy's fallback, with probability 1, said as the global holdout."""
    spec = policy.action(policy.fallback)
    first = Candidate(spec.name, channel, 0.0, 0.0, 1.0, 0.0, [], spec.kind, 0.0)
    return Decision(
        customer_key=customer_key,
        channel=channel,
        actions=[first],
        probability=1.0,
        explored=False,
        fallback=True,
        fallback_reason=HOLDOUT_REASON,
        reasons=[f"fallback {spec.name}: {HOLDOUT_REASON} (no experiment, no action)"],
        prompt=spec.prompt,
        policy_version=policy_version,
        action_probabilities={spec.name: 1.0},
    )
