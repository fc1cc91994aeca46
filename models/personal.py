"""The MLflow store of personal data: what training runs logged about people, found and erased per subject.

Every run of the home's tracking store is read (through `models.registry`, the one module that
talks to MLflow):
- Parquet artifacts with an id column: the test rows (`evaluation/test.parquet`, the id column
  named in `evaluation/meta.json`), the monitoring reference (`monitoring/reference.parquet`) and
  the training members (`lineage/members.parquet`, the customer keys of the training rows);
- CSV tables (`tables/*.csv`): rows holding the subject's key in an id column, or any of the
  subject's identifiers in any cell;
- text artifacts (JSON, HTML, Markdown, YAML, text): occurrences of the subject's identifiers;
- the logged models' input examples (`input_example.json`, `serving_input_example.json`): rows
  with the subject's key, or equal, column by column, to one of the subject's test rows (examples
  logged before `models.examples` were the first test rows);
- params, tags and the logged datasets' names and sources: values holding an identifier;
- the logged models' own files (pickles): the subject's key as Python/pandas (UTF-8) or NumPy (UTF-32)
  keeps a string. A recommender keeps its users' history: what a model learned is not rewritten,
  it is reported and its version flagged (retrain per the governance policy).

`erase` rewrites every affected artifact once for the whole batch of subjects, at the same path:
Parquet and CSV without the rows, text with each identifier replaced by `[erased]`, an input
example replaced by an impersonal one (`models.examples`, from the remaining test rows). Params and
logged datasets are immutable in MLflow: a hit there is reported, never silently kept. Each model
version whose training, test or reference rows held an erased subject is flagged with version tags
(`custintel.erasure.subjects`: how many, `custintel.erasure.at`) BEFORE its artifacts are rewritten,
so a rerun after a kill cannot lose the flag; a `custintel.erasure.pending` tag marks a batch in
progress so the rerun does not count its subjects twice, and is removed when the batch is done.
Whether a flagged version must be retrained is the governance policy's (`erasure.retrain`): the
governance store writes `custintel.erasure.retrain` beside these tags.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from custintel.token_search import occurrences, scrub
from models.examples import impersonal_example
from models.registry import Registry, RunSummary
from models.scores import ScoresStore

STORE = "mlflow"
ERASURE_SUBJECTS = "custintel.erasure.subjects"
ERASURE_AT = "custintel.erasure.at"
ERASURE_PENDING = "custintel.erasure.pending"
ERASED = "[erased]"
EXAMPLE_FILES = ("input_example.json", "serving_input_example.json")
TEXT_SUFFIXES = (".json", ".html", ".htm", ".md", ".txt", ".yaml", ".yml")
MAX_TEXT_BYTES = 50 * 2**20  # a text artifact larger than this is not searched (say so)
MAX_MODEL_BYTES = 500 * 2**20  # a model file larger than this is not searched for keys
MEMBER_PLACES = ("evaluation/test.parquet", "monitoring/reference.parquet", "lineage/members.parquet")
_ROLE = {"evaluation/test.parquet": "test", "monitoring/reference.parquet": "reference",
         "lineage/members.parquet": "training"}  # fmt: skip


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return list(json.loads(frame.to_json(orient="records", date_format="iso", default_handler=str)))


def _same(a: Any, b: Any) -> bool:
    """Two cells equal as an example and a test row hold them (numbers to 1e-9, both missing equal)."""
    a_missing = a is None or (isinstance(a, float) and math.isnan(a))
    b_missing = b is None or (isinstance(b, float) and math.isnan(b)) or (not isinstance(b, str) and pd.isna(b))
    if a_missing or b_missing:
        return a_missing and b_missing
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, (int, float)) and not isinstance(b, str):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def _candidates(row: pd.Series, rows: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The rows that may equal `row` on `columns` (a vectorised first cut; `_same` decides on what is left)."""
    mask = np.ones(len(rows), dtype=bool)
    for column in columns:
        value, cells = row[column], rows[column]
        try:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                mask &= cells.isna().to_numpy()
            elif (
                isinstance(value, (int, float, np.integer, np.floating))
                and not isinstance(value, (bool, np.bool_))
                and cells.dtype.kind in "biuf"
            ):
                numbers = cells.to_numpy(dtype=float, na_value=np.nan)
                mask &= np.isclose(numbers, float(value), rtol=1e-8, atol=1e-8)  # wider than `_same`: a first cut
            elif isinstance(value, str) and (cells.dtype.kind in "OSU" or str(cells.dtype) == "string"):
                mask &= (cells.astype(str) == value).to_numpy()
        except (TypeError, ValueError):
            continue  # not comparable in bulk: `_same` compares it row by row
        if not mask.any():
            break
    return rows[mask]


@dataclass
class _Place:
    """One artifact (or run field) and, per subject, the rows or occurrences it holds of them."""

    place: str
    kind: str  # parquet | csv | text | example | params | tags | datasets
    run_id: str
    path: str  # artifact path in the run, or a logged model's location for an example
    id_column: str | None = None
    found: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # subject request -> rows

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.found.values())


@dataclass
class _RunScan:
    run: RunSummary
    places: list[_Place] = field(default_factory=list)
    members: dict[str, set[str]] = field(default_factory=dict)  # subject request -> roles (test, training, reference)
    test: pd.DataFrame | None = None
    id_column: str = "customer_key"


class MLflowStore:
    """Personal data in the MLflow runs and logged models of the home's tracking store."""

    name = STORE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings)

    # -- reading ----------------------------------------------------------------------------------------------
    def _scan(self, subjects: Sequence[Subject], tmp: Path) -> list[_RunScan]:
        keys = {s.request: set(s.customer_keys) for s in subjects}
        tokens = {s.request: s.tokens() for s in subjects}
        scans = []
        for n, run in enumerate(self.registry.all_runs()):
            scan = _RunScan(run)
            folder = tmp / f"run{n}"
            files = self.registry.run_files(run.run_id)
            meta_path = self.registry.download_run_file(run.run_id, "evaluation/meta.json", folder)
            if meta_path is not None:
                scan.id_column = str(json.loads(meta_path.read_text()).get("id_column") or "customer_key")
            for path in files:
                suffix = Path(path).suffix.lower()
                if suffix not in (".parquet", ".csv", *TEXT_SUFFIXES):
                    continue
                local = self.registry.download_run_file(run.run_id, path, folder)
                if local is None:
                    continue
                place = _Place(f"runs:/{run.run_id}/{path}", suffix.lstrip(".") if suffix in (".parquet", ".csv")
                               else "text", run.run_id, path)  # fmt: skip
                if suffix == ".parquet":
                    frame = pd.read_parquet(local)
                    id_column = scan.id_column if path.startswith("evaluation/") else "customer_key"
                    if id_column not in frame.columns:
                        id_column = "customer_key" if "customer_key" in frame.columns else ""
                    if path == "evaluation/test.parquet":
                        scan.test = frame
                    if not id_column:
                        continue
                    place.id_column = id_column
                    ids = frame[id_column].astype(str)
                    owner = {k: r for r, own in keys.items() for k in own}
                    held = frame[ids.isin(owner)]
                    for request, hit in held.groupby(ids[held.index].map(owner), sort=False):
                        place.found[str(request)] = _records(hit)
                        if path in _ROLE:
                            scan.members.setdefault(str(request), set()).add(_ROLE[path])
                elif suffix == ".csv":
                    frame = pd.read_csv(local, dtype=str, keep_default_na=False)
                    place.id_column = next((c for c in (scan.id_column, "customer_key") if c in frame.columns), None)
                    owner = {t: r for r, own in tokens.items() for t in own | keys[r]}
                    cells = frame.where(frame.isin(owner))
                    for request in {owner[v] for v in pd.unique(cells.stack().to_numpy())}:
                        mine = {t for t, r in owner.items() if r == request}
                        place.found[request] = _records(frame[frame.isin(mine).any(axis=1)])
                elif local.stat().st_size <= MAX_TEXT_BYTES:
                    text = local.read_text(encoding="utf-8", errors="replace")
                    for request, count in occurrences(text, tokens).items():
                        place.found[request] = [{"identifier_occurrences": count}]
                if place.found:
                    scan.places.append(place)
            self._scan_examples(scan, keys, folder)
            self._scan_fields(scan, tokens)
            scans.append(scan)
        return scans

    def _scan_examples(self, scan: _RunScan, keys: dict[str, set[str]], folder: Path) -> None:
        """Input examples holding a subject's row: by key, or equal to one of their test rows."""
        test, id_column = scan.test, scan.id_column
        for model_id, model_name, location in self.registry.run_models(scan.run.run_id):
            for name in EXAMPLE_FILES:
                local = self.registry.download_model_file(location, name, folder / model_id)
                if local is None:
                    continue
                example = _read_example(local)
                if example is None or example.empty:
                    continue
                place = _Place(f"models:/{model_id}/{name}", "example", scan.run.run_id, location)
                owner = {k: r for r, own in keys.items() for k in own}
                for column in {id_column, "customer_key"} & set(example.columns):
                    ids = example[column].astype(str)
                    for request, hit in example[ids.isin(owner)].groupby(ids.map(owner), sort=False):
                        place.found.setdefault(str(request), []).extend(_records(hit))
                tested = [r for r, roles in scan.members.items() if "test" in roles and r not in place.found]
                if tested and test is not None and id_column in test.columns:
                    # An example logged before `models.examples`: the first test rows, without their key.
                    columns = [c for c in example.columns if c in test.columns]
                    theirs = test[test[id_column].astype(str).isin({k for r in tested for k in keys[r]})]
                    for _, row in example.iterrows():
                        for _, candidate in _candidates(row, theirs, columns).iterrows():
                            if columns and all(_same(row[c], candidate[c]) for c in columns):
                                request = owner[str(candidate[id_column])]
                                place.found.setdefault(request, []).append(json.loads(row.to_json(default_handler=str)))
                                break
                for request, rows in place.found.items():
                    place.found[request] = [{"model": model_name, **r} for r in rows]
                if place.found:
                    scan.places.append(place)
            self._scan_model_files(scan, model_id, model_name, location, keys, folder / f"{model_id}-files")

    def _scan_model_files(
        self, scan: _RunScan, model_id: str, model_name: str, location: str, keys: dict[str, set[str]], dst: Path
    ) -> None:
        """A model's own files holding a subject's key: what it learned keeps them (a recommender's history)."""
        root = self.registry.download_model(location, dst)
        owners = {r: own for r, own in keys.items() if own}
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in EXAMPLE_FILES):
            if path.stat().st_size > MAX_MODEL_BYTES:
                continue
            found = _key_occurrences(path.read_bytes(), owners)
            if not found:
                continue
            place = _Place(f"models:/{model_id}/{path.relative_to(root)}", "model", scan.run.run_id, location)
            for request, count in found.items():
                place.found[request] = [{"model": model_name, "key_occurrences": count}]
                scan.members.setdefault(request, set()).add("model")
            scan.places.append(place)

    @staticmethod
    def _scan_fields(scan: _RunScan, tokens: dict[str, set[str]]) -> None:
        run = scan.run
        fields = {
            "params": [{"param": k, "value": v} for k, v in run.params.items()],
            "tags": [{"tag": k, "value": v} for k, v in run.tags.items()],
            "datasets": [{"dataset": n, "source": s} for n, s in run.datasets],
        }
        for kind, entries in fields.items():
            place = _Place(f"runs:/{run.run_id}#{kind}", kind, run.run_id, "")
            for entry in entries:
                for request in occurrences(" ".join(str(v) for v in entry.values()), tokens):
                    place.found.setdefault(request, []).append(entry)
            if place.found:
                scan.places.append(place)

    # -- the protocol -----------------------------------------------------------------------------------------
    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Every artifact row and value naming each subject, and the model versions that trained or tested on them."""
        if not subjects:
            return []
        with tempfile.TemporaryDirectory() as tmp:
            scans = self._scan(subjects, Path(tmp))
        out: list[Holding] = []
        for scan in scans:
            for place in scan.places:
                out += [Holding(STORE, place.place, request, rows) for request, rows in place.found.items()]
            if scan.members:
                for version in self.registry.run_versions(scan.run.run_id):
                    for request, roles in scan.members.items():
                        out.append(Holding(STORE, f"models:/{version.name}/{version.version}", request, [{
                            "model": version.name, "version": version.version, "run_id": scan.run.run_id,
                            "rows_in": sorted(roles)}]))  # fmt: skip
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Rewrite every affected artifact once without the subjects; flag the versions that held them first."""
        done: list[Erased] = []
        with tempfile.TemporaryDirectory() as tmp:
            scans = self._scan(subjects, Path(tmp)) if subjects else []
            keys = {k for s in subjects for k in s.customer_keys}
            tokens = {t for s in subjects for t in s.tokens()} | keys
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            for scan in scans:
                if scan.members:
                    done += self._flag(scan, now)
            for scan in scans:
                for place in scan.places:
                    done.append(self._rewrite(scan, place, keys, tokens, Path(tmp) / "out"))
        done += self._finish_pending()
        return done

    # -- erasing ----------------------------------------------------------------------------------------------
    def _flag(self, scan: _RunScan, now: str) -> list[Erased]:
        """Tag each version of the run with the subjects erased from its rows (once per batch, even after a kill)."""
        out = []
        for version in self.registry.run_versions(scan.run.run_id):
            place = f"models:/{version.name}/{version.version}"
            if ERASURE_PENDING in version.tags:  # a rerun of a batch already counted here
                continue
            before = int(version.tags.get(ERASURE_SUBJECTS, "0") or 0)
            count = before + len(scan.members)
            self.registry.set_version_tags(version.name, version.version, {
                ERASURE_PENDING: now, ERASURE_SUBJECTS: str(count), ERASURE_AT: now})  # fmt: skip
            roles = sorted({r for rs in scan.members.values() for r in rs})
            out.append(Erased(STORE, place, 0, f"flagged: {len(scan.members)} erased subject(s) were in its "
                              f"{', '.join(roles)} rows ({ERASURE_SUBJECTS}={count})"))  # fmt: skip
        return out

    def _finish_pending(self) -> list[Erased]:
        for listing in self.registry.list_models():
            for version in listing.versions:
                if ERASURE_PENDING in version.tags:
                    self.registry.delete_version_tag(version.name, version.version, ERASURE_PENDING)
        return []

    def _rewrite(self, scan: _RunScan, place: _Place, keys: set[str], tokens: set[str], tmp: Path) -> Erased:
        tmp.mkdir(parents=True, exist_ok=True)
        registry, run_id = self.registry, place.run_id
        if place.kind == "model":
            return Erased(STORE, place.place, 0, f"the model's own file holds {place.count} of their keys (what it "
                          "learned, e.g. a recommender's history): not erased; its version is flagged, retrain it "
                          "(the governance policy's erasure.retrain)")  # fmt: skip
        if place.kind in ("params", "datasets"):
            return Erased(STORE, place.place, 0, f"{place.count} {place.kind} value(s) name the subject: MLflow keeps "
                          f"{place.kind} immutable, they are not erased (delete the run to remove them)")  # fmt: skip
        if place.kind == "tags":
            removed = 0
            for key, value in scan.run.tags.items():
                cleaned, _ = scrub(value, tokens, ERASED)
                if cleaned != value:
                    registry.client.set_tag(run_id, key, cleaned)
                    removed += 1
            return Erased(STORE, place.place, removed, "tag values with the identifiers replaced by [erased]")
        if place.kind == "example":
            return self._replace_example(scan, place, keys, tmp)
        local = registry.download_run_file(run_id, place.path, tmp / "in")
        if local is None:
            return Erased(STORE, place.place, 0, "gone")
        out = tmp / Path(place.path).name
        if place.kind == "parquet":
            frame = pd.read_parquet(local)
            assert place.id_column is not None
            kept = frame[~frame[place.id_column].astype(str).isin(keys)]
            kept.to_parquet(out, index=False)
            removed = len(frame) - len(kept)
            detail = "rewritten without the rows"
        elif place.kind == "csv":
            frame = pd.read_csv(local, dtype=str, keep_default_na=False)
            kept = frame[~frame.isin(tokens).any(axis=1)]
            kept.to_csv(out, index=False)
            removed = len(frame) - len(kept)
            detail = "rewritten without the rows"
        else:
            text, removed = scrub(local.read_text(encoding="utf-8", errors="replace"), tokens, ERASED)
            out.write_text(text, encoding="utf-8")
            detail = "identifiers replaced by [erased]"
        registry.replace_run_file(run_id, place.path, out)
        return Erased(STORE, place.place, removed, detail)

    def _replace_example(self, scan: _RunScan, place: _Place, keys: set[str], tmp: Path) -> Erased:
        """An input example holding a subject's row: replaced by an impersonal one (for every file of the model)."""
        name = place.place.rsplit("/", 1)[1]
        local = self.registry.download_model_file(place.path, name, tmp / "in")
        example = None if local is None else _read_example(local)
        if local is None or example is None:
            return Erased(STORE, place.place, 0, "gone")
        remaining = None
        if scan.test is not None and scan.id_column in scan.test.columns:
            remaining = scan.test[~scan.test[scan.id_column].astype(str).isin(keys)]
        fresh = impersonal_example(example, remaining, {scan.id_column, "customer_key"})
        out = tmp / name
        _write_example(local, fresh, out)
        self.registry.replace_model_file(place.path, out)
        return Erased(STORE, place.place, place.count, "replaced by an impersonal example (typical values, no row)")


def _key_occurrences(data: bytes, owners: Mapping[str, set[str]]) -> dict[str, int]:
    """Owner -> occurrences of their keys in a binary file, in UTF-8 (as Python and pandas pickle a string) or UTF-32.

    NumPy keeps a string in UTF-32, in fixed-width cells with nothing between full ones: the file is also read as
    UTF-32 at each of the four byte alignments, and keys are found as substrings of its identifier-shaped runs.
    """
    found = Counter(occurrences(data.decode("latin-1"), owners))
    for offset in range(4):
        end = offset + (len(data) - offset) // 4 * 4
        found.update(_substring_occurrences(data[offset:end].decode("utf-32-le", errors="replace"), owners))
    return dict(found)


_KEY_RUN = re.compile(r"[\w@.+\-:]+")


def _substring_occurrences(text: str, owners: Mapping[str, set[str]]) -> Counter[str]:
    """Owner -> occurrences of their keys anywhere in `text` (inside longer runs too): one pass per key length."""
    owner_of = {k: r for r, own in owners.items() for k in own if k}
    counts: Counter[str] = Counter()
    odd = [k for k in owner_of if not _KEY_RUN.fullmatch(k)]  # a key with other characters: counted directly
    for key in odd:
        counts[owner_of.pop(key)] += text.count(key)
    lengths = sorted({len(k) for k in owner_of})
    for run, times in Counter(_KEY_RUN.findall(text)).items():
        for n in lengths:
            for i in range(len(run) - n + 1):
                if (owner := owner_of.get(run[i : i + n])) is not None:
                    counts[owner] += times
    return +counts


def _read_example(path: Path) -> pd.DataFrame | None:
    """An input example file (`input_example.json` or `serving_input_example.json`) as a frame."""
    data = json.loads(path.read_text(encoding="utf-8"))
    split = data.get("dataframe_split", data) if isinstance(data, dict) else None
    if not isinstance(split, dict) or "columns" not in split or "data" not in split:
        return None
    return pd.DataFrame(split["data"], columns=split["columns"])


def _write_example(original: Path, example: pd.DataFrame, out: Path) -> None:
    """`example` in the original file's layout (MLflow's split orient, wrapped for serving or not)."""
    data = json.loads(original.read_text(encoding="utf-8"))
    split = json.loads(example.to_json(orient="split", index=False, default_handler=str))
    body = {"columns": split["columns"], "data": split["data"]}
    if "dataframe_split" in data:
        out.write_text(json.dumps({"dataframe_split": body}, indent=2), encoding="utf-8")
    else:
        out.write_text(json.dumps(body), encoding="utf-8")


def personal_stores(settings: Settings) -> list[PersonalStore]:
    """The stores of this package that can hold a person's data."""
    return [MLflowStore(settings), ScoresStore(settings)]
