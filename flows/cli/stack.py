"""`custintel stack up | status | down | env` and `custintel deploy`: the production topology on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import app, console, fail, settings

stack_app = typer.Typer(
    help="The production stack on this machine: MLflow and Prefect servers on PostgreSQL, Prefect workers, "
    "a Spark standalone cluster and the BentoML service.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Stack YAML (ports, workers, work pool, databases); the packaged flows/stack.yaml when unset."
    ),  # fmt: skip
]


def _print_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        console.print(f"export {key}={value}", soft_wrap=True, highlight=False)


@stack_app.command("up")
def up(config: ConfigOption = None) -> None:
    """Start every component detached (logs and state under <home>/stack), wait until each one is healthy."""
    from flows.stack import StackError, stack_up

    try:
        result = stack_up(settings(), config, lambda line: console.print(line, highlight=False, soft_wrap=True))
    except StackError as exc:
        raise fail(str(exc)) from None
    if not result.started:
        console.print(f"the stack is already up (started {result.state['started_at']}): nothing started")
    else:
        console.print("[bold green]the stack is up[/]")
    for name, url in result.state["urls"].items():
        console.print(f"  {name:<13} {url}", highlight=False)
    console.print("point custintel at it:")
    _print_env(result.env)


@stack_app.command("status")
def status() -> None:
    """What runs, where, and whether each health endpoint answers; exit 1 when a component is down."""
    from flows.stack import stack_status

    state, parts = stack_status(settings())
    if state is None:
        console.print("the stack is not up (no state file under this home)")
        raise typer.Exit(code=1)
    console.print(f"stack started {state['started_at']} (home {state['home']})", highlight=False)
    for part in parts:
        word = "healthy" if part.healthy else ("running, not healthy" if part.running else "stopped")
        colour = "green" if part.healthy else "red"
        console.print(f"  {part.name:<17} pid {part.pid:<7} [{colour}]{word:<20}[/] {part.url}", highlight=False)
    if not all(p.healthy for p in parts):
        raise typer.Exit(code=1)


@stack_app.command("down")
def down() -> None:
    """Stop what `up` started (process groups, and the flow runs of its workers); PostgreSQL's data stays."""
    from flows.stack import stack_down

    stopped = stack_down(settings(), lambda line: console.print(line, highlight=False))
    console.print("the stack is down" if stopped else "nothing to stop (the stack was not up)")


@stack_app.command("env")
def env() -> None:
    """The variables that point custintel at the running stack (`eval "$(custintel stack env)"`)."""
    from flows.stack import read_state

    state = read_state(settings())
    if state is None:
        raise fail("the stack is not up under this home: run `custintel stack up`")
    _print_env(state["env"])


@app.command("deploy")
def deploy(
    config: Annotated[
        Path | None,
        typer.Option(help="Deployments YAML (schedules, parameters); the packaged flows/deployments.yaml when unset."),
    ] = None,
    work_pool: Annotated[
        str | None, typer.Option(help="Work pool (default: the running stack's, else the config's).")
    ] = None,
) -> None:
    """Register every flow as a Prefect deployment on the work pool, with the config's schedules (idempotent)."""
    from flows.deployments import DeploymentsError, deploy_flows

    try:
        done = deploy_flows(settings(), config, work_pool)
    except DeploymentsError as exc:
        raise fail(str(exc)) from None
    for row in done:
        console.print(f"  {row['name']:<42} {row['schedule']}", highlight=False)
    console.print(f"{len(done)} deployments on work pool {done[0]['work_pool'] if done else work_pool}")
