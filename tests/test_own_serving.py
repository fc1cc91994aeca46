"""A model trained on a user's own table, served by key: `train churn --table`, `promote`, `features own`, `serve`.

The whole path through the real command line and a real BentoML server over HTTP: the
user's table (integer-looking ids, a charges column with blanks) is typed once the same way
for training and for the online store, so the score by key equals the score of the row's
values sent in the body.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CLI = Path(sys.executable).with_name("custintel")


def _telco(n: int = 1800, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n)
    monthly = rng.uniform(20, 110, n).round(2)
    contract = rng.choice(["month", "year", "two_year"], n, p=[0.5, 0.3, 0.2])
    logit = 0.5 - 0.05 * tenure + 0.02 * (monthly - 60) + np.where(contract == "month", 1.0, -1.0)
    charges = (tenure * monthly).round(2).astype(str)
    charges[rng.choice(n, 11, replace=False)] = " "  # new customers' blank totals, as in the public telecom table
    return pd.DataFrame(
        {
            "id": [f"{7000 + i}" for i in range(n)],  # numbers as text: kept as strings end to end
            "tenure": tenure,
            "monthly": monthly,
            "contract": contract,
            "total": charges,
            "churned": np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "Yes", "No"),
        }
    )


def _cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run([str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, f"custintel {' '.join(args)}:\n{output}"
    return output


def test_an_own_table_model_is_served_by_customer_key(tmp_path: Path) -> None:
    path = tmp_path / "telco.csv"
    frame = _telco()
    frame.to_csv(path, index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTINTEL_", "PREFECT_"))}
    env |= {"CUSTINTEL_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    table = ("--table", str(path), "--id", "id")
    _cli(env, tmp_path, "train", "churn", *table, "--label", "churned", "--duration", "tenure", "--engine", "local",
         "--trials", "1")  # fmt: skip
    _cli(env, tmp_path, "promote", "churn", "--engine", "local", "--approver", "Data Owner",
         "--reason", "an own table carries no protected attribute to audit")  # fmt: skip
    online = _cli(env, tmp_path, "features", "own", *table, "--exclude", "churned")
    assert "online: own_telco@1, 1,800 customers" in online
    found = json.loads(_cli(env, tmp_path, "features", "lookup", "7003"))
    row = frame.iloc[3]
    assert found["own_telco@1"]["monthly"] == pytest.approx(row["monthly"]) and "churned" not in found["own_telco@1"]
    blank = frame.index[frame["total"] == " "][0]
    assert json.loads(_cli(env, tmp_path, "features", "lookup", frame.loc[blank, "id"]))["own_telco@1"]["total"] is None

    process, url = start_service({**env, "CUSTINTEL_SERVING_API_KEYS": "k"}, tmp_path / "serve.log")
    try:
        auth = {"Authorization": "Bearer k"}
        by_key = httpx.post(url + "/churn/score", json={"customer_key": "7003"}, headers=auth, timeout=30)
        assert by_key.status_code == 200, by_key.text
        body = by_key.json()
        assert body["status"] == "scored" and body["model"]["version"] == "1", body
        inputs = {k: v for k, v in found["own_telco@1"].items() if k != "as_of"}
        del inputs["tenure"]  # the survival duration is not an input of the classifier
        del inputs["total"]  # total = tenure x monthly: the leak guard left it out of the model
        by_body = httpx.post(url + "/churn/score", json={"features": inputs}, headers=auth, timeout=30)
        assert by_body.status_code == 200, by_body.text
        assert by_body.json()["score"] == pytest.approx(body["score"])
        unknown = httpx.post(url + "/churn/score", json={"customer_key": "no-such-id"}, headers=auth, timeout=30)
        assert unknown.status_code in (200, 404) and unknown.json().get("status", "not_found") == "not_found"
    finally:
        process.terminate()
        process.wait(30)
