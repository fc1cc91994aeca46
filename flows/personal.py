"""Every store personal data is in, and the three requests a person can make: export, erase, verify.

`catalogue` concatenates the stores each package declares (`<package>.personal.personal_stores`),
so the format knowledge stays with the code that writes it; the requests validate every subject
(resolve it through the identity outputs) before anything changes, then hand the stores to
`governance.dsar`, which writes bundles, journals and receipts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from custintel.personal import PersonalStore, Subject
from custintel.settings import Settings
from features.identity.subjects import (
    SubjectError,
    SubjectLine,
    load_subject_index,
    read_requests_file,
    request_subject,
    resolve_lines,
    resolve_request,
)
from features.suppression import existing_privacy_key, privacy_key
from governance.dsar import (
    EraseResult,
    ExportBundleStore,
    ExportResult,
    Suppress,
    VerifyResult,
    erase_request,
    export_request,
    pending_subjects,
    read_journal,
    request_id,
    verify_request,
)

Progress = Callable[[str], None]


def catalogue(settings: Settings) -> list[PersonalStore]:
    """Every personal store of the platform, in erasure order: the data's sources first, identity among them."""
    from features.personal import personal_stores as feature_stores
    from governance.personal import personal_stores as governance_stores
    from insights.personal import personal_stores as insights_stores
    from models.personal import personal_stores as model_stores
    from monitoring.personal import personal_stores as monitoring_stores
    from serving.personal import personal_stores as serving_stores

    return [
        *feature_stores(settings),
        # monitoring before the inference log and MLflow: a pass written before members files existed is recognised
        # by the rows those still hold; governance last, as it tags the versions MLflow flagged and rebuilds the site
        *monitoring_stores(settings),
        *model_stores(settings),
        *insights_stores(settings),
        *serving_stores(settings),
        *governance_stores(settings),
        ExportBundleStore(settings),
    ]


def log_keys_of(settings: Settings) -> Callable[[Subject], Subject]:
    """Adds the inference log's form of each customer key to a subject (the serving policy's key rule, read once)."""
    from serving.inference_log import log_key
    from serving.policy import load_serving_policy

    rule = load_serving_policy(settings.serving_policy).audit.customer_key
    salt = settings.serving_log_salt or "custintel"  # as serving.runtime logs them

    def add(subject: Subject) -> Subject:
        keys = {k for k in (log_key(rule, salt, c) for c in subject.customer_keys) if k}
        return replace(subject, log_keys=tuple(sorted({*subject.log_keys, *keys})))

    return add


def request_lines(subject: str | None, customer: str | None, file: Path | None) -> list[SubjectLine]:
    """The requests of a command: one SUBJECT (with its --customer) or a --file of them."""
    if (subject is None) == (file is None):
        raise ValueError("subject: give either SUBJECT or --file F (one request per line), not both or neither")
    if file is not None:
        if customer is not None:
            raise ValueError("--customer: with --file, put the key after the request on its line (REQUEST<TAB>KEY)")
        return read_requests_file(file)
    return [SubjectLine(0, str(subject).strip(), customer)]


def _resolve(settings: Settings, lines: Sequence[SubjectLine], file: Path | None) -> list[Subject]:
    """Every request resolved (all or nothing), with the inference log's keys."""
    index = load_subject_index(settings)
    if file is None:
        subjects = [resolve_request(index, lines[0].request, lines[0].customer)]
    else:
        subjects = resolve_lines(index, lines, f"--file {file}")
    with_log_keys = log_keys_of(settings)
    return [with_log_keys(s) for s in subjects]


def _id(settings: Settings, kind: str, lines: Sequence[SubjectLine]) -> str:
    return request_id(privacy_key(settings), kind, [(line.request, line.customer) for line in lines])


def export_subject(
    settings: Settings,
    subject: str,
    customer: str | None = None,
    out: Path | None = None,
    progress: Progress | None = None,
    stores: Sequence[PersonalStore] | None = None,
) -> ExportResult:
    """Everything held about one person, as a bundle (default `<home>/governance/dsar/<id>/export/`)."""
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    lines = request_lines(subject, customer, None)
    subjects = _resolve(settings, lines, None)  # before anything is written
    catalogue_ = list(stores) if stores is not None else catalogue(settings)
    return export_request(settings, catalogue_, subjects, _id(settings, "export", lines), out, progress)


def erase_subjects(
    settings: Settings,
    subject: str | None,
    customer: str | None = None,
    file: Path | None = None,
    progress: Progress | None = None,
    stores: Sequence[PersonalStore] | None = None,
    suppress: Suppress | None = None,
    confirm: Callable[[list[Subject]], bool] | None = None,
) -> EraseResult | None:
    """Erase one person (or every person of a file) from every store; resumes an unfinished run of the same request.

    Every request is resolved before anything changes; an unfinished erasure of the same request
    continues with the subjects it started with (the stores may no longer know them). `confirm`
    sees the subjects and may refuse (None returned, nothing changed).
    """
    from features.suppression import suppress as suppress_subjects

    lines = request_lines(subject, customer, file)
    key = existing_privacy_key(settings)
    subjects: list[Subject] | None = None
    if key is not None:  # without a key no journal can exist yet
        rid = request_id(key, "erase", [(line.request, line.customer) for line in lines])
        journal = read_journal(settings, rid)
        if journal is not None and journal.status == "done":
            subjects = []
        elif journal is not None:
            subjects = pending_subjects(settings, rid)
    if subjects is None:
        subjects = _resolve(settings, lines, file)
        if confirm is not None and not confirm(subjects):
            return None
    catalogue_ = list(stores) if stores is not None else catalogue(settings)
    return erase_request(
        settings, catalogue_, subjects, _id(settings, "erase", lines), suppress or suppress_subjects, progress
    )


def verify_subjects(
    settings: Settings,
    subject: str | None,
    customer: str | None = None,
    file: Path | None = None,
    progress: Progress | None = None,
    stores: Sequence[PersonalStore] | None = None,
) -> VerifyResult:
    """Search every store and the home's files for each person; works after erasure from the request alone.

    The source drops under `<home>/data/` are inputs as delivered, not stores: they are not searched.
    """
    lines = request_lines(subject, customer, file)
    index = load_subject_index(settings)
    subjects, problems, with_log_keys = [], [], log_keys_of(settings)
    for line in lines:
        try:
            subjects.append(with_log_keys(request_subject(index, line.request, line.customer)))
        except SubjectError as exc:
            problems.append(f"line {line.line}: {exc}" if file is not None else str(exc))
    if problems:
        raise SubjectError((f"--file {file}: " if file is not None else "") + " | ".join(problems))
    catalogue_ = list(stores) if stores is not None else catalogue(settings)
    return verify_request(
        settings, catalogue_, subjects, _id(settings, "verify", lines), progress, skip=[settings.default_data_dir]
    )
