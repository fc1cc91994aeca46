"""`custintel experiment`: design an experiment, register its spec, launch and stop it, show it, assign keys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.app import app, console, expected, fail, settings

experiment_app = typer.Typer(
    help="Experiments: design (sample size, duration), register a versioned hashed spec, launch, stop, show, assign.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")

NameArgument = Annotated[str, typer.Argument(help="The experiment's name (its spec's `name`).")]
SpecArgument = Annotated[Path, typer.Argument(help="Experiment spec YAML (see experiments/examples/).")]
TRAFFIC_DAYS = 14  # recent traffic: distinct customers decided per day over this many days of the decision log


def _registry() -> Any:
    from experiments.spec import ExperimentRegistry, experiments_root

    return ExperimentRegistry(experiments_root(settings().home_dir))


def _errors() -> tuple[type[BaseException], ...]:
    from experiments.errors import ExperimentError

    return (ExperimentError,)


def _short(digest: str) -> str:
    return digest[:12]


def recent_daily_traffic(days: int = TRAFFIC_DAYS) -> tuple[float | None, int]:
    """Distinct customers decided per day (mean over the days with decisions) in the last `days` days.

    (None, 0) when the decision log has none: the duration then needs --daily-traffic.
    """
    from serving.decision_log import read_decisions

    since = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    decisions = read_decisions(settings(), since=since)
    if decisions.empty:
        return None, 0
    per_day = decisions.assign(day=decisions["decided_at"].str[:10]).groupby("day")["customer_key"].nunique()
    return float(per_day.mean()), int(len(per_day))


@experiment_app.command("design")
def design_command(
    baseline: Annotated[float, typer.Option(help="Control's mean: a rate for a proportion, the mean, or the ratio.")],
    mde: Annotated[float, typer.Option(help="Minimum detectable effect (absolute, or relative with --relative).")],
    kind: Annotated[
        Literal["proportion", "mean", "ratio"] | None,
        typer.Option(help="Metric kind. Default: the spec's primary metric with --register, else proportion."),
    ] = None,
    relative: Annotated[bool, typer.Option(help="--mde is relative to the baseline (0.05: 5%).")] = False,
    alpha: Annotated[float | None, typer.Option(help="Significance level. Default: the spec's, else 0.05.")] = None,
    power: Annotated[float, typer.Option(help="Power: the chance of detecting the effect when it is there.")] = 0.8,
    sd: Annotated[float | None, typer.Option(help="Per-customer standard deviation (mean and ratio metrics).")] = None,
    arms: Annotated[
        str | None,
        typer.Option(help="Comma-separated arms, control first (default: the spec's, else control,treatment)."),
    ] = None,
    daily_traffic: Annotated[
        float | None,
        typer.Option(
            help="Customers a day entering the experiment. Default: recent traffic from the decision log "
            f"(distinct customers decided per day, last {TRAFFIC_DAYS} days) times the spec's traffic."
        ),
    ] = None,  # fmt: skip
    sequential: Annotated[
        bool | None, typer.Option(help="Size for a sequential test (daily looks). Default: the spec's stopping mode.")
    ] = None,
    register: Annotated[
        Path | None, typer.Option(help="Write the design into this spec and register it (a new version if changed).")
    ] = None,
) -> None:
    """Sample size per arm and duration for a metric's minimum detectable effect; optionally register the spec."""
    from experiments.spec import load_spec

    spec = None
    try:
        from experiments.design import design
    except ImportError as exc:  # the design module ships with the analysis (issue 22, item 1)
        raise fail(f"design: this install has no experiments.design ({exc})") from None
    with expected(*_errors()):
        if register is not None:
            spec = load_spec(register)
        arm_names = tuple(a.strip() for a in arms.split(",")) if arms else None
        if spec is not None and arm_names is None:
            arm_names = tuple(a.name for a in spec.arms)
        shares = {a.name: a.share for a in spec.arms} if spec is not None and arms is None else None
        if spec is not None and arm_names is not None and arm_names[0] != spec.control:
            arm_names = (spec.control, *[a for a in arm_names if a != spec.control])
        traffic_line = None
        if daily_traffic is None:
            recent, days = recent_daily_traffic()
            if recent is not None:
                share = spec.traffic if spec is not None else 1.0
                daily_traffic = recent * share
                traffic_line = (f"traffic: {recent:,.0f} customers a day decided over the last {days} day(s) "
                                f"of the decision log x {share:g} = {daily_traffic:,.0f} a day")  # fmt: skip
        result = design(
            kind or (spec.primary.kind if spec is not None else "proportion"),
            baseline,
            mde,
            relative=relative,
            alpha=alpha if alpha is not None else (spec.stopping.alpha if spec is not None else 0.05),
            power=power,
            sd=sd,
            arms=arm_names or ("control", "treatment"),
            shares=shares,
            daily_traffic=daily_traffic,
            sequential=sequential if sequential is not None else bool(spec and spec.stopping.mode == "sequential"),
        )
    _print_design(result)
    if traffic_line:
        console.print(traffic_line, soft_wrap=True)
    elif result.days is None:
        console.print("days: no --daily-traffic and no recent decisions in the log to estimate it", soft_wrap=True)
    if spec is not None:
        with expected(*_errors()):
            designed = spec.model_copy(update={"design": result.as_dict()})
            from experiments.spec import parse_spec

            registered = _registry().register(parse_spec(designed.model_dump(mode="json"), str(register)))
        where = escape(str(registered.path))
        console.print(f"registered {registered.name} v{registered.version} {registered.status} "
                      f"(sha256 {_short(registered.hash)}): {where}", soft_wrap=True)  # fmt: skip


def _print_design(result: Any) -> None:
    console.print(f"{result.kind}: baseline {result.baseline:g}, mde {result.mde:g} ({result.relative_mde:+.1%}), "
                  f"alpha {result.alpha:g}, power {result.power:g}", soft_wrap=True)  # fmt: skip
    table = Table()
    for column in ("arm", "share", "customers"):
        table.add_column(column)
    for arm in result.arms:
        table.add_row(escape(arm), f"{result.shares[arm]:.2f}", f"{result.n_per_arm[arm]:,}")
    console.print(table)
    days = f"{result.days} days at {result.daily_traffic:,.0f} a day" if result.days is not None else "days unknown"
    console.print(f"total {result.total:,} customers; {days}; "
                  f"{'sequential' if result.sequential else 'fixed horizon'}; {escape(result.method)}",
                  soft_wrap=True)  # fmt: skip


@experiment_app.command("register")
def register_command(spec: SpecArgument) -> None:
    """Validate a spec and register it: the same content keeps its version; a changed draft gets a new one."""
    from experiments.spec import load_spec

    with expected(*_errors()):
        registered = _registry().register(load_spec(spec))
    console.print(f"{registered.name} v{registered.version} {registered.status} (sha256 {_short(registered.hash)}, "
                  f"layer {registered.layer}): {escape(str(registered.path))}", soft_wrap=True)  # fmt: skip


@experiment_app.command("launch")
def launch_command(name: NameArgument) -> None:
    """Launch the experiment's latest version: /decide starts assigning its share of the layer's customers."""
    with expected(*_errors()):
        launched = _registry().launch(name)
    start, end = launched.buckets
    share = (end - start) / 100
    console.print(f"{launched.name} v{launched.version} launched {launched.launched_at:%Y-%m-%d %H:%M} UTC: "
                  f"layer {launched.layer} buckets [{start}, {end}) ({share:g}% of its customers)")  # fmt: skip


@experiment_app.command("stop")
def stop_command(name: NameArgument) -> None:
    """Stop the experiment: its customers are no longer assigned; its buckets return to the layer."""
    with expected(*_errors()):
        stopped = _registry().stop(name)
    console.print(f"{stopped.name} v{stopped.version} stopped")


@experiment_app.command("show")
def show_command(
    name: NameArgument,
    version: Annotated[int | None, typer.Option(help="A registered version (default: the latest).")] = None,
) -> None:
    """The spec, its hash and status, its buckets, and the exposures per arm from the decision log."""
    from serving.decision_log import read_exposures

    with expected(*_errors()):
        found = _registry().get(name, version)
    spec = found.spec
    launched = f" {found.launched_at:%Y-%m-%d %H:%M} UTC" if found.launched_at else ""
    console.print(f"{spec.name} v{found.version} {found.status}{launched}; sha256 {found.hash}", soft_wrap=True)
    console.print(f"hypothesis: {escape(spec.hypothesis)}", soft_wrap=True)
    console.print(f"layer {spec.layer}, traffic {spec.traffic:g}, buckets [{found.buckets[0]}, {found.buckets[1]}); "
                  f"stopping {spec.stopping.mode} (alpha {spec.stopping.alpha:g}, at most {spec.stopping.max_days} "
                  f"days); actions: {', '.join(spec.actions) or 'none'}", soft_wrap=True)  # fmt: skip
    exposures = read_exposures(settings(), spec.name)
    counts: dict[str, int] = {str(k): int(v) for k, v in exposures.groupby("arm").size().items()}
    table = Table(title="arms")
    for column in ("arm", "share", "withholds", "exposed"):
        table.add_column(column)
    for arm in spec.arms:
        marker = " (control)" if arm.name == spec.control else ""
        table.add_row(escape(arm.name + marker), f"{arm.share:g}", escape(", ".join(arm.suppress) or "-"),
                      f"{counts.get(arm.name, 0):,}")  # fmt: skip
    console.print(table)
    metrics = Table(title="metrics")
    for column in ("metric", "kind", "from", "better", "primary"):
        metrics.add_column(column)
    for m in spec.metrics:
        source = ", ".join(x for x in (f"event {m.event}" if m.event else "", f"column {m.column}" if m.column else "",
                                       f"/ {m.denominator}" if m.denominator else "") if x)  # fmt: skip
        metrics.add_row(escape(m.name), m.kind, escape(source), "higher" if m.higher_is_better else "lower",
                        "yes" if m.primary else "")  # fmt: skip
    console.print(metrics)
    if spec.design:
        n = spec.design.get("n_per_arm", {})
        console.print(f"design: {', '.join(f'{k} {v:,}' for k, v in n.items())} customers; "
                      f"{spec.design.get('days') or '?'} days", soft_wrap=True)  # fmt: skip
    stray = sorted(set(counts) - {a.name for a in spec.arms})
    if stray:
        console.print(f"exposures in arms not in this version: {', '.join(stray)}", soft_wrap=True)


@experiment_app.command("list")
def list_command() -> None:
    """Every registered experiment: latest version, status, layer, buckets, hash."""
    from experiments.errors import ExperimentError

    registry = _registry()
    names = registry.names()
    if not names:
        console.print("no experiment registered: `custintel experiment register SPEC.yaml`")
        return
    table = Table(title="experiments")
    for column in ("name", "version", "status", "layer", "traffic", "buckets", "sha256"):
        table.add_column(column)
    problems = []
    for name in names:
        try:
            e = registry.get(name)
        except ExperimentError as exc:  # one tampered experiment does not hide the others
            table.add_row(escape(name), "", "[bold red]does not check out[/]", "", "", "", "")
            problems.append(str(exc))
            continue
        table.add_row(escape(e.name), str(e.version), e.status, escape(e.layer), f"{e.spec.traffic:g}",
                      f"[{e.buckets[0]}, {e.buckets[1]})", _short(e.hash))  # fmt: skip
    console.print(table)
    for line in problems:
        console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
    if problems:
        raise typer.Exit(code=1)


@experiment_app.command("assign")
def assign_command(
    keys: Annotated[list[str], typer.Argument(help="Customer keys.")],
) -> None:
    """Which experiment and arm each key gets now (the launched experiments, the settings' global holdout)."""
    from experiments.assignment import Assigner

    config = settings()
    with expected(*_errors()):
        launched, problems = _registry().launched()
        assigner = Assigner(launched, holdout=config.experiments_holdout)
    for line in problems:
        console.print(f"[yellow]left out:[/] {escape(line)}", soft_wrap=True)
    table = Table(title=f"assignments ({len(launched)} launched; global holdout {config.experiments_holdout:g})")
    for column in ("key", "experiment", "version", "arm", "layer"):
        table.add_column(column)
    for key in keys:
        if assigner.holdout(key):
            table.add_row(escape(key), "global holdout", "", "", "")
            continue
        found = assigner.assign(key)
        if not found:
            table.add_row(escape(key), "none", "", "", "")
        for a in found:
            table.add_row(escape(key), escape(a.experiment), str(a.version), escape(a.arm), escape(a.layer))
    console.print(table)
