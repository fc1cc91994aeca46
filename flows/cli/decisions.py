"""`custintel decisions`: next-best-action policies governed like models (register, promote through the gate, show)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.app import Engine, app, console, expected, fail, run_engine, settings

decisions_app = typer.Typer(
    help="Next-best-action decision policies: register, promote through the gate (simulation, equity, truth), show.",
    no_args_is_help=True,
)
app.add_typer(decisions_app, name="decisions")

PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="Decision policy YAML. Default: $CUSTINTEL_DECISION_POLICY, else the packaged decisions/policy.yaml.",
    ),
]
NameOption = Annotated[
    str | None, typer.Option("--name", help="Registered model name of the policy (default: the policy's name).")
]


def _errors() -> tuple[type[BaseException], ...]:
    from decisions.policy import PolicyError
    from flows.decisions import DecisionGateError
    from governance.store import GateError
    from models.registry import RegistryError

    return (PolicyError, DecisionGateError, GateError, RegistryError)


@decisions_app.command("register")
def register(policy: PolicyOption = None, name: NameOption = None) -> None:
    """Validate a policy file and register it as a new version (@challenger); the same file keeps its version."""
    from flows.decisions import register as register_policy

    with expected(*_errors()):
        candidate = register_policy(settings(), policy, name)
    console.print(f"{candidate.name} v{candidate.version} @challenger ({candidate.policy.name}, sha256 "
                  f"{candidate.digest[:12]}); champion: {candidate.champion_version or 'none'}")  # fmt: skip


@decisions_app.command("promote")
def promote(
    policy: PolicyOption = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="A generated world's _truth folder: measure the retention offer against it. Default: the "
            "demo world's, when the home has one."
        ),
    ] = None,  # fmt: skip
    approver: Annotated[str | None, typer.Option(help="Waive a failed equity check: the approver's name.")] = None,
    reason: Annotated[str | None, typer.Option(help="With --approver: why the failure is accepted.")] = None,
    name: NameOption = None,
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow promote_decision_policy (tracked); local: call the steps."),
    ] = "prefect",
) -> None:
    """Register the policy, simulate it on the latest customers, check equity, estimate, card it; promote if it passes.

    Exit code 2 when the gate blocks it.
    """
    from flows.decisions import default_truth
    from governance.gate import Waiver
    from governance.store import actor

    if (approver is None) != (reason is None):
        raise fail("a waiver needs both --approver and --reason")
    config = settings()
    with expected(ValueError):
        waiver = Waiver(approver, reason or "") if approver else None
    truth_dir = truth or default_truth(config)
    if truth is not None and not (truth / "treatment_effect.parquet").is_file():
        raise fail(f"--truth: {truth} holds no treatment_effect.parquet (a generated world's _truth folder)")
    who = actor()

    def under_prefect() -> dict[str, Any]:
        from flows.decisions import promote_decision_policy

        return promote_decision_policy(
            str(policy) if policy else None, config.to_flow(), str(truth_dir) if truth_dir else None, approver, reason,
            who, name,
        )  # fmt: skip

    def locally(say: Any) -> dict[str, Any]:
        from flows.decisions import PLAIN_STEPS, run_policy_gate

        return run_policy_gate(config, policy, truth_dir, waiver, who, PLAIN_STEPS, name)

    decision = run_engine(
        engine, "Simulating and judging the decision policy", "promote_decision_policy", under_prefect, locally,
        _errors(),
    )  # fmt: skip
    print_decision(decision)
    if decision["result"] == "blocked":
        raise typer.Exit(code=2)


def print_decision(decision: dict[str, Any]) -> None:
    """The gate's answer: result, allocation, equity, truth, reasons."""
    colour = {"promoted": "green", "waived": "yellow", "blocked": "bold red"}.get(decision["result"], "white")
    console.print(f"[{colour}]{decision['result']}[/] {decision['model']} v{decision['version']} "
                  f"(champion {decision['champion_before'] or 'none'} -> {decision['champion_after'] or 'none'}); "
                  f"decision {decision['id']}")  # fmt: skip
    summary = decision.get("summary") or {}
    if summary:
        table = Table(title=f"allocation on {summary['customers']:,} customers as of {summary['as_of']}")
        for column in ("action", "kind", "channel", "count", "capacity"):
            table.add_column(column)
        for row in summary["allocation"]:
            table.add_row(*(str(row.get(c, "")) for c in ("action", "kind", "channel", "count", "capacity")))
        console.print(table)
        console.print(f"expected value {summary['expected_value']:,.2f}; given up to the constraints "
                      f"{summary['value_given_up']:,.2f}")  # fmt: skip
        off = summary.get("off_policy")
        console.print(f"off-policy estimate: {off if isinstance(off, str) else off}", soft_wrap=True)
        for line in summary.get("truth_lines", []):
            console.print(f"truth: {escape(line)}", soft_wrap=True)
        for row in summary.get("truth_curve", []):
            console.print(
                f"truth at {row['capacity']:,} offers ({row['share']:.0%}): uplift / churn risk "
                f"{row['uplift_over_churn_risk']:.2f}x, uplift / best {row['uplift_fraction_of_best']:.2f}"
            )
    for check in decision.get("checks", []):
        mark = "[green]ok[/]" if check["passed"] else "[bold red]FAILED[/]"
        console.print(f"{mark} {check['name']}: {escape('; '.join(check['details']))}", soft_wrap=True)
    console.print(f"card: {escape(str(settings().governance_dir / str(decision['card'])))}", soft_wrap=True)


@decisions_app.command("show")
def show(name: NameOption = None, policy: PolicyOption = None) -> None:
    """The champion and challenger policy versions, with the champion's policy name and digest."""
    from decisions.policy import load_policy
    from flows.decisions import policy_source, registered_name
    from models.registry import CHALLENGER, CHAMPION, Registry

    with expected(*_errors()):
        name = registered_name(policy_source(settings(), policy)[1], name)
        registry = Registry(settings())
        champion = registry.policy_version(name, CHAMPION)
        challenger = registry.alias_version(name, CHALLENGER) if registry.exists() else None
    if champion is None and challenger is None:
        raise fail(f"no registered policy {name}: `custintel decisions promote` first")
    if champion is not None:
        served = load_policy(champion[1])
        console.print(f"@champion v{champion[0]}: {served.name} (sha256 {served.digest()[:12]}), "
                      f"{len(served.actions)} actions")  # fmt: skip
    console.print(f"@challenger: {'v' + challenger if challenger else 'none'}")
