"""The layer contract (pyproject.toml, `lint-imports`): it holds on this tree, and breaks on a forbidden import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "custintel",
    "features",
    "models",
    "experiments",
    "decisions",
    "insights",
    "governance",
    "serving",
    "monitoring",
    "flows",
)


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("lint-imports")
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}  # the copy's packages, not the installed ones
    return subprocess.run([str(cli), "--no-cache", "--no-logo"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and the contract, to break on purpose."""
    root = tmp_path_factory.mktemp("layers")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_contract_holds_on_this_tree(tree: Path) -> None:
    done = _lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("monitoring/drift.py", "import mlflow", "only models.registry talks to MLflow"),
        ("serving/schemas.py", "from mlflow import MlflowClient", "only models.registry talks to MLflow"),
        ("features/lake.py", "import flows.cli", "features imports only custintel"),
        ("models/splits.py", "import governance.gate", "models imports only features and custintel"),
        ("governance/cards.py", "import serving.policy", "governance imports only models, features, insights"),
        ("monitoring/checks.py", "import governance.store", "monitoring imports only models"),
        ("custintel/settings.py", "import features.lake", "custintel (settings, shared helpers) imports nothing"),
        ("models/tuning.py", "import prefect", "only flows knows Prefect"),
        ("decisions/arbitration.py", "import serving.policy", "decisions imports only custintel, features, models and"),
        ("experiments/analysis.py", "import models.registry", "experiments imports only custintel and features"),
        ("features/lake.py", "import experiments.analysis", "features imports only custintel"),
        ("models/splits.py", "import decisions.policy", "models imports only features and custintel"),
        ("insights/kpis.py", "import serving.decision_log", "insights imports only features and custintel"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(tree: Path, module: str, line: str, contract: str) -> None:
    target = tree / module
    original = target.read_text()
    try:
        target.write_text(original + f"\n{line}  # added by the test\n")
        done = _lint(tree)
    finally:
        target.write_text(original)
    assert done.returncode != 0, done.stdout
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split()), done.stdout
