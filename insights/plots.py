"""The operations page's pictures: a KPI by month with its interval, as PNG, on matplotlib's `Figure` (no pyplot)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from insights.report import KpiSeries

_SCALE = {"share": 100.0, "rate": 100.0}


def kpi_plot(kpi: KpiSeries, path: Path) -> Path | None:
    """Draw `kpi`'s monthly points (and their 95% interval where known) into `path`; None when nothing to draw."""
    points = [p for p in kpi.points if p.value is not None]
    if not points:
        return None
    scale = _SCALE.get(kpi.unit, 1.0)
    x = list(range(len(points)))
    fig = Figure(figsize=(6.4, 2.8))
    ax = fig.add_subplot()
    ax.plot(x, [p.value * scale for p in points if p.value is not None], marker="o", ms=3, color="#1f3a5f")
    lows = [p.low for p in points]
    highs = [p.high for p in points]
    if all(v is not None for v in lows + highs):
        ax.fill_between(
            x, [v * scale for v in lows if v is not None], [v * scale for v in highs if v is not None], alpha=0.2
        )
    step = max(1, len(points) // 8)
    ax.set_xticks(x[::step], [p.period for p in points][::step], rotation=30, ha="right", fontsize=8)
    unit = {"share": "%", "rate": "%", "points": "points", "currency": "per resolved issue", "score": ""}[kpi.unit]
    ax.set_ylabel(unit)
    ax.set_title(kpi.label, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=90)
    return path
