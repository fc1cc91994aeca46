"""Model cards: what a governance reviewer reads about one audited model version.

Built from the tracked run, the audit and the gate's verdict (never typed by hand), as
one list of sections rendered both to Markdown and to a standalone HTML page whose plots
sit beside it. Confidence intervals come from a bootstrap over the test rows.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, roc_auc_score

from governance.audit import Audit, FeatureAudit
from governance.gate import Check, Scored, Verdict, performance
from models.result import EvaluationSet

Block = str | list[str] | pd.DataFrame | tuple[str, str]  # paragraph | bullets | table | (image file, caption)


@dataclass
class CardContext:
    """Everything a card says, gathered from the registry, the run, the audit and the verdict."""

    name: str
    version: str
    family: str
    run_id: str
    owner: str
    policy_version: str
    policy_hash: str
    intended_use: str
    out_of_scope: list[str]
    caveats: list[str]
    decided_at: str
    actor: str
    decision_id: str
    training: dict[str, Any]
    metrics: dict[str, tuple[float, float, float]]  # name -> (value, low, high) on the test rows
    threshold: dict[str, Any] | None
    audit: Audit
    verdict: Verdict
    champion_before: str | None
    champion_after: str | None


_HORIZON_WORDS = re.compile(r"(?:in |within )?the next \d+ days")


def intended_use_for(text: str, horizon: str | None) -> str:
    """The policy's intended use with its label window replaced by the run's ('next 90 days' for a 26-week label).

    `horizon` is what the run recorded ('182 days', or 'not given'); None (no label record) keeps the text.
    """
    if horizon is None:
        return text
    window = f"within {horizon}" if horizon != "not given" else "within the label's window (its horizon was not given)"
    replaced, count = _HORIZON_WORDS.subn(window, text)
    return replaced if count else f"{text} (Label window: {horizon}.)"


_FAST: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]] = {
    "auc": lambda y, p, w: float(roc_auc_score(y, p, sample_weight=w)),
    "pr_auc": lambda y, p, w: float(average_precision_score(y, p, sample_weight=w)),
    "brier": lambda y, p, w: float(np.average((p - y) ** 2, weights=w)),
}


def bootstrap_metrics(
    evaluation: EvaluationSet, scored: Scored, metrics: Sequence[str], reps: int = 100, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Each metric on the test rows with a 95% percentile interval from `reps` resamples of the rows."""
    rng = np.random.default_rng(seed)
    n = len(evaluation.frame)
    samples = [rng.integers(0, n, n) for _ in range(reps)]
    out = {}
    for metric in metrics:
        value = performance(evaluation, scored, metric)
        draws = []
        if evaluation.kind == "classifier" and metric in _FAST:
            assert evaluation.label is not None
            y = evaluation.frame[evaluation.label].to_numpy(dtype=float)
            w = evaluation.frame[evaluation.weight].to_numpy(dtype=float) if evaluation.weight else None
            for idx in samples:
                if np.unique(y[idx]).size == 2:
                    draws.append(_FAST[metric](y[idx], scored.score[idx], None if w is None else w[idx]))
        else:
            for idx in samples:
                sub = EvaluationSet(
                    **{**evaluation.__dict__, "frame": evaluation.frame.iloc[idx].reset_index(drop=True)}
                )
                part = Scored(
                    scored.score[idx],
                    None if scored.lists is None else [scored.lists[i] for i in idx.tolist()],
                    None if scored.fallback is None else scored.fallback[idx],
                )
                draws.append(performance(sub, part, metric))
        finite = np.asarray([d for d in draws if np.isfinite(d)])
        low, high = np.quantile(finite, [0.025, 0.975]) if finite.size else (np.nan, np.nan)
        out[metric] = (value, float(low), float(high))
    return out


def fairness_figures(audit: Audit) -> dict[str, Figure]:
    """One bar chart per audited feature: the group rates the gate looks at."""
    figures = {}
    for feature in audit.features:
        table = feature.groups
        columns = [
            c for c in ("selection_rate", "tpr", "observed_rate", "mean_score", "hit_rate", "coverage") if c in table
        ]
        fig = Figure(figsize=(max(5.0, 0.9 * len(table) + 2), 3.2))
        ax = fig.subplots()
        x = np.arange(len(table))
        width = 0.8 / max(len(columns), 1)
        for i, column in enumerate(columns):
            ax.bar(x + i * width, table[column].astype(float).fillna(0).to_numpy(), width, label=column)
        labels = [f"{g}{'' if gated else ' *'}" for g, gated in zip(table.index, table["gated"], strict=True)]
        ax.set_xticks(x + width * (len(columns) - 1) / 2, labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{audit.family}: by {feature.feature} (* not gated)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        figures[f"fairness_{_slug(feature.feature)}.png"] = fig
    return figures


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def figure_png(fig: Figure) -> bytes:
    """A figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


_COUNTS = ("rows", "positives", "negatives", "selected")


def _audit_table(feature: FeatureAudit) -> pd.DataFrame:
    table = feature.groups.reset_index()
    for column in table.columns:
        if column in ("group", "gated") or not pd.api.types.is_numeric_dtype(table[column]):
            continue
        pattern = "{:,.0f}" if column in _COUNTS else "{:.3f}"
        table[column] = table[column].map(lambda v, p=pattern: "" if pd.isna(v) else p.format(v))
    return table


def card_sections(ctx: CardContext) -> list[tuple[str, list[Block]]]:
    """The card's content, in reading order."""
    verdict = ctx.verdict
    decision = [
        f"Result: **{verdict.result}** on {ctx.decided_at} by {ctx.actor} (decision {ctx.decision_id}).",
        f"Champion before: {ctx.champion_before or 'none'}; after: {ctx.champion_after or 'unchanged'}.",
        f"Policy version {ctx.policy_version}, sha256 {ctx.policy_hash}.",
    ]
    if verdict.waiver:
        decision.append(f"Waived by {verdict.waiver.approver}: {verdict.waiver.reason}")
    checks = pd.DataFrame(
        [
            {"check": c.name, "passed": "yes" if c.passed else "NO", "details": "; ".join(c.details)}
            for c in verdict.checks
        ]
    )
    training = ctx.training
    metrics = pd.DataFrame(
        [
            {"metric": k, "value": f"{v:.4f}", "95% interval": f"{lo:.4f} - {hi:.4f}"}
            for k, (v, lo, hi) in ctx.metrics.items()
        ]
    )
    sections: list[tuple[str, list[Block]]] = [
        (
            "Model",
            [
                [
                    f"Registered model {ctx.name}, version {ctx.version} ({ctx.family})",
                    f"MLflow run {ctx.run_id}",
                    f"Owner: {ctx.owner}",
                ]
            ],
        ),
        ("Intended use", [ctx.intended_use]),
        ("Out of scope", [ctx.out_of_scope or ["nothing stated"]]),
        ("Training data", [[f"{k}: {v}" for k, v in training.items()]]),
        ("Metrics on the test rows", [metrics]),
    ]
    calibration = next((c for c in verdict.checks if c.name == "calibration" and c.numbers), None)
    if calibration is not None:
        sections.append(("Calibration on the test rows", _calibration_block(calibration)))
    if ctx.threshold:
        sections.append(("Decision threshold", [[f"{k}: {v}" for k, v in ctx.threshold.items()]]))
    fairness: list[Block] = [
        f"Selection: {ctx.audit.selection}. Groups under {ctx.audit.min_group_size} rows, and 'unknown', are "
        "reported but not gated. Sensitive attributes are joined for this audit only."
    ]
    if ctx.audit.overall:
        fairness.append(
            "Calibration between groups: each group's observed rate over its mean prediction (O/E) is compared "
            f"with the other groups' (calibration_ratio: smallest / largest); over all rows O/E is "
            f"{ctx.audit.overall.get('observed_to_predicted', float('nan')):.3f}, which the calibration check judges."
        )
    for feature in ctx.audit.features:
        fairness.append(
            f"By {feature.feature}: " + ", ".join(f"{k} {v:.3f}" for k, v in feature.summary.items() if np.isfinite(v))
        )
        fairness.append(_audit_table(feature))
        fairness.append((f"fairness_{_slug(feature.feature)}.png", f"Group rates by {feature.feature}"))
    sections += [
        ("Fairness audit", fairness),
        ("Gate decision", [decision, checks, *([verdict.reasons] if verdict.reasons else [])]),
        ("Caveats", [ctx.caveats or ["none recorded"]]),
    ]
    return sections


def _calibration_block(check: Check) -> list[Block]:
    """The calibration check's numbers: what a reviewer needs to see whether probabilities mean what they say."""
    n = check.numbers
    ratio, se = n.get("observed_to_predicted", float("nan")), n.get("observed_to_predicted_se", float("nan"))
    return [
        [
            f"Observed rate {n.get('observed_rate', float('nan')):.4f} against mean prediction "
            f"{n.get('mean_prediction', float('nan')):.4f} over {n.get('rows', 0):,.0f} test rows",
            f"Observed / predicted {ratio:.3f} (standard error {se:.3f} for a calibrated model on these rows)",
            f"Check: {'passed' if check.passed else 'FAILED'}: {'; '.join(check.details)}",
        ]
    ]


def render_markdown(ctx: CardContext) -> str:
    """The card as Markdown."""
    lines = [f"# Model card: {ctx.name} v{ctx.version}", ""]
    for title, blocks in card_sections(ctx):
        lines += [f"## {title}", ""]
        for block in blocks:
            lines += [*_markdown_block(block), ""]
    return "\n".join(lines)


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, str):
        return [block]
    if isinstance(block, tuple):
        return [f"![{block[1]}]({block[0]})"]
    if isinstance(block, pd.DataFrame):
        head = "| " + " | ".join(map(str, block.columns)) + " |"
        rule = "|" + "---|" * len(block.columns)
        body = [
            "| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in block.itertuples(index=False)
        ]
        return [head, rule, *body]
    return [f"- {item}" for item in block]


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}.promoted{color:#196619}.blocked{color:#a01010}.waived{color:#a06000}img{max-width:100%}.wide{overflow-x:auto}"""


def render_html(ctx: CardContext, back_link: str | None = None) -> str:
    """The card as a standalone HTML page (plots referenced by file name, beside it)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Model card: {html.escape(ctx.name)} v{html.escape(ctx.version)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    if back_link:
        parts.append(f'<p><a href="{html.escape(back_link)}">back</a></p>')
    parts.append(
        f"<h1>Model card: {html.escape(ctx.name)} v{html.escape(ctx.version)} "
        f'<span class="{ctx.verdict.result}">[{ctx.verdict.result}]</span></h1>'
    )
    for title, blocks in card_sections(ctx):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts += [_html_block(b) for b in blocks]
    parts.append("</body></html>")
    return "\n".join(parts)


def _inline(text: str) -> str:
    escaped = html.escape(text)
    while escaped.count("**") >= 2:
        escaped = escaped.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
    return escaped


def _html_block(block: Block) -> str:
    if isinstance(block, str):
        return f"<p>{_inline(block)}</p>"
    if isinstance(block, tuple):
        image, caption = html.escape(block[0]), html.escape(block[1])
        return f'<figure><img src="{image}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'
    if isinstance(block, pd.DataFrame):
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.columns)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
            for row in block.itertuples(index=False)
        )
        return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    return "<ul>" + "".join(f"<li>{_inline(str(item))}</li>" for item in block) + "</ul>"


def card_files(ctx: CardContext, figures: dict[str, Figure], to_json: Callable[[], str]) -> dict[str, bytes | str]:
    """Every file of the card folder: card.md, card.html, audit.json and the plots."""
    files: dict[str, bytes | str] = {
        "card.md": render_markdown(ctx),
        "card.html": render_html(ctx),
        "audit.json": to_json(),
    }
    files.update({name: figure_png(fig) for name, fig in figures.items()})
    return files


def render_sections_markdown(title: str, sections: Sequence[tuple[str, list[Block]]]) -> str:
    """Any card's sections as Markdown (a decision policy's card uses the model card's blocks)."""
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            lines += [*_markdown_block(block), ""]
    return "\n".join(lines)


def render_sections_html(title: str, result: str, sections: Sequence[tuple[str, list[Block]]]) -> str:
    """Any card's sections as a standalone HTML page, the gate's result beside the title."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<h1>{html.escape(title)} <span class="{html.escape(result)}">[{html.escape(result)}]</span></h1>',
    ]
    for heading, blocks in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += [_html_block(b) for b in blocks]
    parts.append("</body></html>")
    return "\n".join(parts)
