"""`custintel export`: data leaving the platform, de-identified to the export policy, with its risk measured."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flows.cli.app import app, console, expected, settings


@app.command("export")
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="What to export: a lake table name, `golden` (the golden records) or `features:YYYY-MM-DD`."
        ),
    ],
    out: Annotated[Path, typer.Option(help="A new (or empty) folder for data.parquet, data.csv and the report.")],
    k: Annotated[
        int | None, typer.Option(min=2, help="k-anonymity to reach (default: the policy's; may only be raised).")
    ] = None,
    l: Annotated[  # noqa: E741  # the l of l-diversity
        int | None,
        typer.Option(min=1, help="l-diversity on sensitive columns (default: the policy's; may only be raised)."),
    ] = None,
    sample: Annotated[
        int | None, typer.Option(min=1, help="Export a seeded random sample of this many rows (default: all).")
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Comma-separated columns to export (default: all of the source's).")
    ] = None,
) -> None:
    """De-identify a table to the export policy (k, l, pseudonyms), measure its singling-out risk, write it.

    Refused, with the reason and nothing written, when the policy cannot be met.
    """
    from features.featurestore.offline import OfflineStoreError
    from features.identity.store import IdentityStoreError
    from features.lake import IngestError
    from governance.export import (
        ExportError,
        anonymise,
        check_out_dir,
        classify_columns,
        effective_rules,
        parse_source,
        privacy_key,
        read_export_source,
        sample_rows,
        select_columns,
        write_export,
    )
    from governance.policy import PolicyError, load_policy
    from governance.trail import record

    config = settings()
    with expected(ExportError, PolicyError, IngestError, IdentityStoreError, OfflineStoreError):
        # options first: nothing is read when the command itself is wrong
        policy = load_policy(config.governance_policy)
        rules = effective_rules(policy.export, k, l)
        parse_source(source)
        check_out_dir(out)
        wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        if columns is not None and not wanted:
            raise ExportError("--columns: give at least one column name")
        read = read_export_source(config, source)
        frame = sample_rows(select_columns(read.frame, wanted), sample, rules.seed)
        classes = classify_columns(list(frame.columns), read.classes, rules.classes)
        with console.status(f"de-identifying {len(frame)} rows of {source}…"):
            result = anonymise(frame, classes, rules, lambda: privacy_key(config), source=source)
        paths = write_export(out, result)
    report = result.report
    figures = {key: report[key] for key in ("rows_in", "rows_out", "suppressed_rows", "suppressed_share", "k", "l")} | {
        "information_loss": report["information_loss"]["with_suppression"],
        "singling_out": {
            mode: report["singling_out"][mode]["value"]
            for mode in ("univariate", "multivariate")
            if mode in report["singling_out"]
        },
        "generalisation": {c: g["name"] for c, g in report["generalisation"].items()},
        "columns": report["columns_out"],
        "out": str(out.resolve()),
        "policy_digest": policy.digest,
        "k_asked": rules.k,
        "l_asked": rules.l,
    }
    record(config, "data_export", source, figures)
    risk = figures["singling_out"]
    l_text = ", ".join(f"{c} {v}" for c, v in report["l"].items()) or "no sensitive column"
    console.print(
        f"exported {report['rows_out']} of {report['rows_in']} rows of {escape(source)} to {escape(str(out))}: "
        f"k={report['k']} (policy {rules.k}), l: {escape(l_text)} (policy {rules.l}), "
        f"suppressed {report['suppressed_rows']} ({report['suppressed_share']:.1%}), "
        f"information loss {figures['information_loss']:.3f}, singling-out risk "
        + ", ".join(f"{mode} {value:.3f}" for mode, value in risk.items()),
        soft_wrap=True,
    )
    for column, name in figures["generalisation"].items():
        console.print(f"  {escape(column)}: {escape(name)}", soft_wrap=True)
    console.print(f"report: {escape(str(paths[3]))}", soft_wrap=True)
