"""The `custintel` command line: parse, load settings, call one function.

`app` builds the Typer app, its callback and the one engine dispatch (`run_engine`); the commands
live by topic (`data`, `identity`, `features`, `models`, `audit`, `operations`, `demo`) and render through
`views`; `logs` shows custintel's own log records and keeps Prefect quiet about expected errors.
Importing this package registers every command on `app` (the `custintel` entry point).
"""

from flows.cli.app import app

# Imported in the order `custintel --help` lists the commands and groups.
from flows.cli import data, identity, features, models, audit, operations, demo, export  # noqa: I001  # isort: skip
from flows.cli import dsar, retention  # noqa: I001  # isort: skip
from flows.cli import decisions  # noqa: I001  # isort: skip
from flows.cli import experiments, experiment_analysis, causal  # noqa: I001  # isort: skip
from flows.cli import score, stack  # noqa: I001  # isort: skip
from flows.cli import insights  # noqa: I001  # isort: skip

__all__ = ["app", "audit", "causal", "data", "decisions", "demo", "dsar", "experiment_analysis", "experiments",
           "export", "features", "identity", "insights", "models", "operations", "retention", "score",
           "stack"]  # fmt: skip
