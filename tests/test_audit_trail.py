"""The hash-chained audit trail and decision log: appends (also from concurrent processes) verify clean; any
edited, inserted, deleted or cut-off line is named by line and seq; the CLI's exit codes say so."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from custintel.settings import Settings
from governance import trail

# The CLI, the gate's store and the site are imported inside the tests that use them: the writer
# processes import this module, and stay light without MLflow.


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def _fill(settings: Settings, n: int, who: str = "tester") -> Path:
    for i in range(n):
        trail.record(settings, "access_request", f"customer C{i:04d}", {"i": i, "by": who}, actor=who)
    return trail.trail_path(settings)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _append_from_a_process(home: str, who: str, n: int, start: Any) -> None:
    start.wait()
    _fill(Settings(home=Path(home)), n, who)


def test_appends_from_two_processes_make_one_clean_chain(home: Settings) -> None:
    _fill(home, 20)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    writers = [ctx.Process(target=_append_from_a_process, args=(str(home.home), w, 60, start)) for w in "ab"]
    for p in writers:
        p.start()
    start.set()
    for p in writers:
        p.join(timeout=120)
        assert p.exitcode == 0
    result = trail.verify(trail.trail_path(home))
    assert result.ok, result.problems
    assert result.entries == 140 and result.head_seq == 140
    entries = trail.read_entries(trail.trail_path(home))
    assert [e["seq"] for e in entries] == list(range(1, 141))
    assert entries[0]["prev_hash"] == trail.GENESIS
    assert sum(e["actor"] == "a" for e in entries) == sum(e["actor"] == "b" for e in entries) == 60
    assert all(e["hash"] == trail.entry_hash(e) for e in entries)
    assert "intact, 140 entries" in result.summary() and entries[-1]["hash"] in result.summary()


def test_an_edited_line_is_named(home: Settings) -> None:
    path = _fill(home, 10)
    lines = _lines(path)
    record = json.loads(lines[4])
    record["details"]["i"] = 99
    lines[4] = json.dumps(record, sort_keys=True)
    _write(path, lines)
    result = trail.verify(path)
    assert [(p.line, p.seq) for p in result.problems] == [(5, 5)]
    assert "edited" in result.problems[0].message
    # Rewriting its hash as well moves the break to the next line's link.
    record["hash"] = trail.entry_hash(record)
    lines[4] = json.dumps(record, sort_keys=True)
    _write(path, lines)
    problems = trail.verify(path).problems
    assert [(p.line, p.seq) for p in problems] == [(6, 6)] and "prev_hash" in problems[0].message


def test_a_deleted_line_is_named_by_the_gap(home: Settings) -> None:
    path = _fill(home, 10)
    lines = _lines(path)
    del lines[3]  # seq 4
    _write(path, lines)
    problems = trail.verify(path).problems
    assert [(p.line, p.seq) for p in problems] == [(4, 5)]
    assert "seq 4 deleted" in problems[0].message and "prev_hash" in problems[0].message
    _write(path, _lines(path)[1:])  # the first line too
    problems = trail.verify(path).problems
    assert [(p.line, p.seq) for p in problems] == [(1, 2), (3, 5)] and "seq 1 deleted" in problems[0].message
    path.unlink()  # the whole log: its head file still says how far it went
    problems = trail.verify(path).problems
    assert len(problems) == 1 and "the log is missing" in problems[0].message
    assert "all 10 entries were removed" in problems[0].message


def test_an_inserted_line_is_named(home: Settings) -> None:
    path = _fill(home, 6)
    lines = _lines(path)
    # A forger who knows the scheme: a well-formed entry with a correct hash, linked to seq 3.
    forged = {**json.loads(lines[2]), "subject": "customer X", "seq": 4, "prev_hash": json.loads(lines[2])["hash"]}
    forged["hash"] = trail.entry_hash(forged)
    lines.insert(3, json.dumps(forged, sort_keys=True))
    _write(path, lines)
    problems = trail.verify(path).problems
    assert len(problems) == 1 and (problems[0].line, problems[0].seq) == (5, 4)
    assert "inserted" in problems[0].message and "line 4 (seq 4)" in problems[0].message
    # A plain line without a chain is named where it stands.
    lines = _lines(path)
    del lines[3]
    lines.insert(2, json.dumps({"action": "erasure", "subject": "nobody"}))
    _write(path, lines)
    problems = trail.verify(path).problems
    assert [(p.line, p.seq) for p in problems] == [(3, None)] and "not chained" in problems[0].message


def test_a_truncated_tail_is_named_and_later_appends_keep_the_gap(home: Settings) -> None:
    path = _fill(home, 5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # cut inside the last line
    problems = trail.verify(path).problems
    assert problems[0].line == 5 and problems[0].seq == 5 and "cut off" in problems[0].message
    assert "records seq 5" in str(problems[-1])
    # Whole last lines removed: the head file written by the last append says so.
    _write(path, _lines(path)[:3])
    problems = trail.verify(path).problems
    assert len(problems) == 1 and "ends at seq 3" in problems[0].message
    assert "the last 2 entries were removed" in problems[0].message
    # The next append does not paper over the cut: it continues after seq 5, so the gap stays visible.
    entry = trail.record(home, "erasure", "customer C0009", {"stores": 3})
    assert entry["seq"] == 6
    problems = trail.verify(path).problems
    assert [(p.line, p.seq) for p in problems] == [(4, 6)] and "seq 4..5 deleted" in problems[0].message


def test_unreadable_lines_odd_text_and_an_anchor(home: Settings) -> None:
    path = _fill(home, 3)
    anchor = trail.verify(path).head_hash
    assert anchor is not None
    # A line separator inside a value stays inside its line (JSON Lines split on \n only).
    trail.record(home, "export", "vendor extract", {"note": "a\u2028b \u00e9 \x00"})
    result = trail.verify(path, anchor=anchor)
    assert result.ok and result.entries == 4
    assert trail.read_entries(path)[-1]["details"]["note"] == "a\u2028b \u00e9 \x00"
    lines = _lines(path)
    lines[1] = lines[1][:-1] + ', "seq": 2}'  # a duplicate key is refused, not silently overridden
    _write(path, lines)
    problems = trail.verify(path).problems
    assert [(p.line, p.seq) for p in problems] == [(2, 2)] and "duplicate key seq" in problems[0].message
    # An anchor the trail no longer contains: history was rewritten.
    path.unlink()
    _fill(home, 3, who="someone else")
    assert "anchor" in str(trail.verify(path, anchor=anchor).problems[-1])
    with pytest.raises(trail.TrailError, match="action 'Bad Action'"):
        trail.record(home, "Bad Action", "x")


def _decision(result: str, version: str, policy: str = "p" * 64) -> dict[str, Any]:
    return {
        "id": f"{version:0>32}",
        "time": "2026-01-01T00:00:00+00:00",
        "actor": "gatekeeper",
        "action": "promote",
        "model": "custintel-churn",
        "version": version,
        "result": result,
        "reasons": ["ok"],
        "checks": [{"name": "auc", "passed": True}],
        "policy_hash": policy,
        "policy_version": 1,
        "waiver": {"approver": "Dana", "reason": "pilot"} if result == "waived" else None,
        "champion_before": None,
        "champion_after": version,
        "card": None,
    }


def test_the_decision_log_is_chained_and_every_reader_still_reads_it(home: Settings) -> None:
    from governance import site, store

    log = store.decision_log(home)
    log.parent.mkdir(parents=True)
    # Two lines written before chaining: sealed by the first chained line's prev_hash.
    legacy = [json.dumps(_decision("promoted", "1"), sort_keys=True), json.dumps(_decision("blocked", "2"))]
    _write(log, legacy)
    store.append_decision(home, _decision("promoted", "3"))
    store.append_decision(home, _decision("waived", "4", policy="q" * 64))
    store.append_decision(home, {**_decision("rolled_back", "4", policy="q" * 64), "action": "rollback"})

    result = trail.verify(log)
    assert result.ok and result.entries == 3 and result.sealed_lines == 2
    decisions = store.read_decisions(home, "custintel-churn")
    assert [d["version"] for d in decisions] == ["1", "2", "3", "4", "4"]
    assert [d.get("seq") for d in decisions] == [None, None, 1, 2, 3]
    entries = site.read_decisions(log)
    assert [e.error for e in entries] == [None] * 5 and entries[3].get("result") == "waived"

    actions = [(e["action"], e["subject"]) for e in trail.read_entries(trail.trail_path(home))]
    assert actions == [
        ("promotion", "custintel-churn v3"),
        ("policy_change", "governance policy"),
        ("waiver", "custintel-churn v4"),
        ("rollback", "custintel-churn v4"),
    ]
    waiver = trail.read_entries(trail.trail_path(home))[2]
    assert waiver["actor"] == "gatekeeper" and waiver["details"]["decision_seq"] == 2
    assert waiver["details"]["decision_hash"] == store.read_decisions(home)[3]["hash"]

    # Editing a sealed (pre-chain) line is caught by the first chained line.
    _write(log, [legacy[0].replace('"1"', '"9"'), *_lines(log)[1:]])
    problems = trail.verify(log).problems
    assert [(p.line, p.seq) for p in problems] == [(3, 1)] and "lines before it" in problems[0].message


def test_the_cli_verifies_and_shows(home: Settings) -> None:
    from typer.testing import CliRunner

    from flows.cli import app
    from governance import store

    runner = CliRunner()
    args = ["--home", str(home.home), "audit"]
    path = _fill(home, 4)
    store.append_decision(home, _decision("promoted", "1"))
    ok = runner.invoke(app, [*args, "verify", "--decisions"])
    assert ok.exit_code == 0, ok.output
    assert "intact, 5 entries" in ok.output and "intact, 1 entries" in ok.output
    head = trail.verify(path).head_hash
    assert head and runner.invoke(app, [*args, "verify", "--anchor", head]).exit_code == 0
    unknown = runner.invoke(app, [*args, "verify", "--anchor", "f" * 64])
    assert unknown.exit_code == 1 and "is not the hash of any entry" in " ".join(unknown.output.split())
    shown = runner.invoke(app, [*args, "show", "--last", "2", "--json"])
    assert shown.exit_code == 0
    assert [json.loads(line)["seq"] for line in shown.output.splitlines()] == [4, 5]
    table = runner.invoke(app, [*args, "show", "--decisions"])
    assert table.exit_code == 0 and "custintel-churn v1" in table.output
    trail.record(home, "export", "[red]vendor[/red]", {"rows": 3})  # data is printed as it is, not as markup
    table = runner.invoke(app, [*args, "show", "--last", "1"])
    assert table.exit_code == 0 and "[red]vendor[/red]" in table.output

    lines = _lines(path)
    lines[1] = lines[1].replace("C0001", "C0666")
    _write(path, lines)
    bad = runner.invoke(app, [*args, "verify"])
    assert bad.exit_code == 1
    assert "TAMPERED" in bad.output and "line 2 (seq 2): edited" in " ".join(bad.output.split())
    assert "Traceback" not in bad.output


def test_the_reviewers_site_shows_each_chain_intact_or_names_the_bad_line(home: Settings) -> None:
    from governance import site, store

    store.append_decision(home, _decision("promoted", "1"))
    store.append_decision(home, _decision("blocked", "2"))
    index = site.build_site(home)
    text = " ".join(index.read_text(encoding="utf-8").split())
    assert "decisions.jsonl: intact, 2 entries" in text and "audit_trail.jsonl: intact, 2 entries" in text
    log = store.decision_log(home)
    _write(log, [line.replace('"reasons": ["ok"]', '"reasons": ["fine"]') for line in _lines(log)])
    site.build_site(home)
    for page in ("index.html", "decisions.html"):
        text = " ".join((home.site_dir / page).read_text(encoding="utf-8").split())
        assert 'decisions.jsonl: <span class="waiver">TAMPERED</span>' in text
        assert "line 1 (seq 1): edited" in text and "line 2 (seq 2): edited" in text
