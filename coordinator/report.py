"""The run report (`pandalm-coordinator report RUN --out DIR`): HTML, PNG figures, JSON summary.

Only config ids, parameters and tallies go in; the report shows the selected config and its
margin, the pairwise win/tie/loss matrix, a superiority graph (an edge A -> B where A beats B by
at least `threshold` in (wins - losses) / items, as in the PandaLM paper's Figure 4) and the
comparisons won, undecided and lost per hyperparameter value (the paper's Figure 8).

Pair tallies, records, standings and what decided each comparison come from results.py, as the
console's do. A run where no comparison was decided by evidence says it could not tell the
configs apart.

The best config's margin is (wins - losses) / items from its own point of view in its deciding
comparison: the last recorded comparison it took part in, which in the paper and adaptive modes
is the one that made it the winner.

An optional `ReferenceMetric` (an outside measure per config) checks the judge: the reference
rank of the chosen config and Kendall's tau between the reference and the judge's ranking, the
Bradley-Terry strengths that round robin ranks by, fitted on every recorded comparison.

Figures are drawn on matplotlib `Figure` objects with the Agg canvas, never through pyplot's
global state, so the report renders on a headless coordinator. The page is the Jinja2 template
`coordinator/templates/report.html`, autoescaped: config ids, parameters and site names go in as
text, never as markup.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from scipy.stats import kendalltau

from common.tally import Tally
from coordinator.results import (
    CANNOT_TELL,
    ParamValue,
    Record,
    RunResult,
    aggregation_mix,
    config_records,
    decided_by,
    describe_summing,
    pair_outcomes,
    pair_summing,
    pair_tallies,
    standings,
    summed_sites,
)
from coordinator.selection import bradley_terry_with_covariance

FIGURES = ("matrix.png", "superiority.png", "hyperparameters.png")
REFERENCE_FIGURE = "reference.png"


@dataclass(frozen=True)
class ReferenceMetric:
    """An outside measure per config id (accuracy on a labelled set, say) to check the judge's
    choice against; configs without a value are left out of the check."""

    name: str
    values: Mapping[str, float]
    higher_is_better: bool

    def __post_init__(self) -> None:
        bad = [config_id for config_id, value in self.values.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"{self.name}: non-finite values for {', '.join(bad)}")


def superiority_edges(result: RunResult, threshold: float = 0.1) -> list[tuple[int, int]]:
    """(winner, loser) for every pair where (wins - losses) / items >= threshold. The threshold is
    positive, so an edge needs wins != losses: a tie-broken comparison never makes one."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    edges = []
    for (a, b), tally in pair_tallies(result).items():
        if tally.margin >= threshold:
            edges.append((a, b))
        elif -tally.margin >= threshold:
            edges.append((b, a))
    return edges


def wins_by_hyperparameter(result: RunResult) -> dict[str, dict[ParamValue, Record]]:
    """Per hyperparameter, per value: the records of the configs with that value, summed (a pair
    of configs sharing the value adds both sides). Every value among the configs is listed."""
    counts: dict[str, dict[ParamValue, Record]] = {}
    for (_, params), record in zip(result.configs, config_records(result), strict=True):
        for name, value in params.items():
            values = counts.setdefault(name, {})
            values[value] = values.get(value, Record()) + record
    return {name: dict(sorted(values.items(), key=_value_order)) for name, values in counts.items()}


def deciding_comparison(result: RunResult) -> tuple[int, Tally] | None:
    """The best config's last recorded opponent and their summed tally from the best's side."""
    if result.best is None:
        return None
    totals = pair_tallies(result)
    for a, b, _ in reversed(result.comparisons):
        if result.best in (a, b):
            opponent = b if a == result.best else a
            if (result.best, opponent) in totals:
                return opponent, totals[result.best, opponent]
            return opponent, totals[opponent, result.best].reversed()
    return None


def judge_strengths(result: RunResult) -> list[float]:
    """Per config index, its Bradley-Terry log-strength over every recorded comparison, fitted as
    round robin ranks configs (selection.py: ties as half wins, invalid items left out) and
    rounded to the 6 decimals the fit reaches. NaN where a config has no valid judged item: its
    strength would be the fit's prior alone."""
    totals = pair_tallies(result)
    fitted = bradley_terry_with_covariance(len(result.configs), totals)[0]
    judged = {i for (a, b), t in totals.items() if t.win + t.tie + t.loss for i in (a, b)}
    return [
        float(strength) if index in judged else math.nan
        for index, strength in enumerate(np.round(fitted, 6))
    ]


def write_report(
    result: RunResult,
    out_dir: Path,
    threshold: float = 0.1,
    *,
    reference: ReferenceMetric | None = None,
    other_references: Sequence[ReferenceMetric] = (),
) -> dict[str, Any]:
    """Write report.html, the figures and summary.json into `out_dir`; return the summary. With a
    `reference`, also check the judge against it and draw reference.png; `other_references`
    are checked the same way, in `other_reference_checks`, without a figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    strengths = judge_strengths(result)
    summary = _summary(result, threshold, strengths)
    every_reference = [*([reference] if reference else []), *other_references]
    summary["versus_baseline"] = versus_baseline_summary(result, every_reference)
    if reference is not None:
        summary |= _reference_summary(result, reference, strengths)
        _save(_reference_figure(result, reference, strengths), out_dir / REFERENCE_FIGURE)
    if other_references:
        summary["other_reference_checks"] = [
            _reference_summary(result, other, strengths) for other in other_references
        ]
    _save(_matrix_figure(result), out_dir / "matrix.png")
    _save(_superiority_figure(result, threshold), out_dir / "superiority.png")
    _save(_hyperparameter_figure(result), out_dir / "hyperparameters.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.html").write_text(_html(result, summary))
    return summary


def versus_baseline_summary(
    result: RunResult, references: Sequence[ReferenceMetric] = ()
) -> dict[str, Any] | None:
    """The chosen config against the run's baseline, from the chosen config's side: the
    baseline, the summed tally and its margin ((wins - losses) / items), and each reference's
    value for both configs where it has both. None when the run has no baseline (or has not
    finished); `chosen_is_baseline` with no counts when the selection chose the baseline."""
    if result.baseline is None or result.best is None:
        return None
    chosen, baseline = result.config_id(result.best), result.config_id(result.baseline)
    tally = result.versus_baseline
    return {
        "baseline": baseline,
        "baseline_params": dict(result.configs[result.baseline][1]),
        "chosen": chosen,
        "chosen_is_baseline": result.best == result.baseline,
        **({} if tally is None else {**asdict(tally), "margin": tally.margin}),
        "reference": {
            metric.name: {
                "chosen": metric.values[chosen],
                "baseline": metric.values[baseline],
                "higher_is_better": metric.higher_is_better,
            }
            for metric in references
            if chosen in metric.values and baseline in metric.values
        },
    }


def _value_order(item: tuple[ParamValue, Record]) -> tuple[bool, Any]:
    return isinstance(item[0], str), item[0]


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN."""
    return value if math.isfinite(value) else None


def _summary(result: RunResult, threshold: float, strengths: list[float]) -> dict[str, Any]:
    totals = pair_tallies(result)
    comparisons = _comparisons_summary(result)
    by_evidence = sum(c["decided_by"] == "evidence" for c in comparisons)
    items = sum(tally.items for tally in totals.values())
    return {
        "run": result.run_key,
        "selection_mode": result.selection_mode,
        "selection": result.selection,
        "decided": by_evidence > 0,
        "conclusion": _conclusion(by_evidence, len(comparisons)),
        "best_config": _best_summary(result),
        **_deciding_summary(result),
        "sites": list(result.sites),
        "sites_left_out": list(result.sites_left_out),
        "left_out": [site.as_json() for site in result.left_out],
        "aggregation": aggregation_mix(result),
        "aggregation_decision": result.aggregation,
        "status": result.status,
        "status_reason": result.reason,
        "judgments": result.judgments,
        "training": result.training.as_summary() if result.training else None,
        "wall_seconds": result.wall_seconds,
        "tie_share": sum(tally.tie for tally in totals.values()) / items if items else None,
        "superiority_threshold": threshold,
        "superiority_edges": [
            [result.config_id(a), result.config_id(b)]
            for a, b in superiority_edges(result, threshold)
        ],
        "wins_by_hyperparameter": {
            name: {str(value): asdict(record) for value, record in values.items()}
            for name, values in wins_by_hyperparameter(result).items()
        },
        "standings": [
            {"config": result.config_id(index), "net": record.net, **asdict(record)}
            for index, record in standings(result)
        ],
        "judge_strength": {
            result.config_id(index): _finite_or_none(strength)
            for index, strength in enumerate(strengths)
        },
        "comparisons": comparisons,
    }


def _comparisons_summary(result: RunResult) -> list[dict[str, Any]]:
    """Each compared pair's summed tally, margin, winner and what decided it; how it was summed
    (SecAgg+ or in the clear, over how many sites) and which sites it covers."""
    summing = pair_summing(result)
    return [
        {
            "a": result.config_id(pair.a),
            "b": result.config_id(pair.b),
            **asdict(pair.tally),
            "margin": pair.tally.margin,
            "winner": None if pair.winner is None else result.config_id(pair.winner),
            "decided_by": pair.decided_by,
            "aggregation": describe_summing(summing.get((pair.a, pair.b), [])),
            "sites": summed_sites(summing.get((pair.a, pair.b), [])),
        }
        for pair in pair_outcomes(result)
    ]


def _conclusion(by_evidence: int, comparisons: int) -> str:
    """How much of the run evidence decided, in a sentence."""
    if not comparisons:
        return "No comparison has been recorded yet."
    if by_evidence == comparisons:
        return f"Every comparison was decided by evidence ({by_evidence} of {by_evidence})."
    if by_evidence:
        return (
            f"{by_evidence} of {comparisons} comparisons were decided by evidence; the "
            "rest kept the incumbent by the tie-break (equal wins and losses)."
        )
    return CANNOT_TELL


def _best_summary(result: RunResult) -> dict[str, Any] | None:
    if result.best is None:
        return None
    record = config_records(result)[result.best]
    best_id, best_params = result.configs[result.best]
    return {
        "index": result.best,
        "id": best_id,
        "params": dict(best_params),
        "comparisons": record.comparisons,
        "decided_by_evidence": record.decided,
    }


def _deciding_summary(result: RunResult) -> dict[str, Any]:
    """The best config's margin and the comparison it comes from (`deciding_comparison`)."""
    deciding = deciding_comparison(result)
    if deciding is None:
        return {"margin": None, "deciding_comparison": None}
    opponent, tally = deciding
    return {
        "margin": tally.margin,
        "deciding_comparison": {
            "opponent": result.config_id(opponent),
            **asdict(tally),
            "decided_by": decided_by(tally),
        },
    }


def _reference_summary(
    result: RunResult, reference: ReferenceMetric, strengths: list[float]
) -> dict[str, Any]:
    """The reference's values, where the chosen config ranks by them (1 = strictly their best,
    among configs with a value; configs with an equal value count against it, so a reference
    that cannot tell the configs apart never ranks the choice first) and Kendall's tau-b
    between them and the judge's strengths over configs with both, signed so that +1 means the
    two orders agree."""
    ids = [config_id for config_id, _ in result.configs]
    unknown = sorted(set(reference.values) - set(ids))
    if unknown:
        raise ValueError(f"{reference.name}: no config with id {', '.join(unknown)} in the run")
    sign = 1.0 if reference.higher_is_better else -1.0
    oriented = {config_id: sign * value for config_id, value in reference.values.items()}
    rank = None
    if result.best is not None and ids[result.best] in oriented:
        chosen = oriented[ids[result.best]]
        rank = sum(value >= chosen for value in oriented.values())
    paired = [
        (strength, oriented[config_id])
        for config_id, strength in zip(ids, strengths, strict=True)
        if config_id in oriented and math.isfinite(strength)
    ]
    tau = None
    if all(len({pair[side] for pair in paired}) > 1 for side in (0, 1)):
        judge, metric = zip(*paired, strict=True)
        tau = float(kendalltau(judge, metric).statistic)
    return {
        "reference_metric": {
            "name": reference.name,
            "higher_is_better": reference.higher_is_better,
            "values": {i: reference.values[i] for i in ids if i in reference.values},
        },
        "reference_rank_of_best": rank,
        "kendall_tau": tau,
    }


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def _label_size(n_configs: int) -> float:
    return 8 if n_configs <= 20 else max(4.0, 160 / n_configs)


def _label(result: RunResult, index: int, shown: int) -> str:
    """The config id where a figure shows at most 20 configs, else its index (the report's
    config table maps indices to ids)."""
    return result.config_id(index) if shown <= 20 else str(index)


def _matrix_figure(result: RunResult) -> Figure:
    """Row config's win rate against the column config (ties count half, invalid items not at
    all); blank where the pair was not compared; hatched where the tie-break decided."""
    n = len(result.configs)
    rate = np.full((n, n), np.nan)
    counts: dict[tuple[int, int], Tally] = {}
    for (a, b), tally in pair_tallies(result).items():
        counts[a, b], counts[b, a] = tally, tally.reversed()
    for (row, column), tally in counts.items():
        valid = tally.win + tally.tie + tally.loss
        if valid:
            rate[row, column] = (tally.win + tally.tie / 2) / valid
    side = max(5.0, 2.5 + 0.12 * n)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(rate, cmap="RdYlGn", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="row's win rate (ties count half)")
    labels = [_label(result, index, n) for index in range(n)]
    axes.set_xticks(range(n), labels, rotation=90, fontsize=_label_size(n))
    axes.set_yticks(range(n), labels, fontsize=_label_size(n))
    for (row, column), tally in counts.items():
        if decided_by(tally) == "tie-break":
            cell = Rectangle(
                (column - 0.5, row - 0.5), 1, 1, fill=False, hatch="//", edgecolor="0.6", lw=0
            )
            axes.add_patch(cell)
        if n <= 12:
            text = f"{tally.win}/{tally.tie}/{tally.loss}"
            axes.text(column, row, text, ha="center", va="center", fontsize=7)
    axes.set_title(
        f"{result.run_key}: win/tie/loss, row against column\n"
        "hatched: equal wins and losses, decided by tie-break"
    )
    return figure


def _superiority_figure(result: RunResult, threshold: float) -> Figure:
    """Layered like the paper's Figure 4, winners above the configs they beat; a seeded spring
    layout when the edges form a cycle."""
    graph = nx.DiGraph(superiority_edges(result, threshold))
    acyclic = nx.is_directed_acyclic_graph(graph)
    layers = [list(layer) for layer in nx.topological_generations(graph)] if acyclic else []
    widest = max(map(len, layers), default=0)
    figure = Figure(figsize=(max(9.0, 0.3 * widest), 7), layout="constrained")
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_title(
        f"{result.run_key}: A -> B where A beats B by (win - loss) / items >= {threshold}"
    )
    if not graph:
        axes.text(0.5, 0.5, "no comparison reached the threshold", ha="center", va="center")
        return figure
    if layers:
        for depth, nodes in enumerate(layers):
            for node in nodes:
                graph.nodes[node]["layer"] = depth
        positions = nx.multipartite_layout(graph, subset_key="layer", align="horizontal")
        positions = {node: (x, -y) for node, (x, y) in positions.items()}
    else:
        positions = nx.spring_layout(graph, seed=0)
    shown = graph.number_of_nodes()
    nx.draw_networkx(
        graph,
        positions,
        ax=axes,
        labels={node: _label(result, node, shown) for node in graph},
        node_color=["tab:orange" if node == result.best else "tab:blue" for node in graph],
        node_size=120 if shown <= 20 else 60,
        font_size=_label_size(shown),
        arrowsize=8,
    )
    return figure


def _hyperparameter_figure(result: RunResult) -> Figure:
    """Stacked per value: comparisons won by evidence, undecided (tie-break) and lost."""
    by_name = wins_by_hyperparameter(result)
    figure = Figure(figsize=(3.2 * max(len(by_name), 1), 3.8), layout="constrained")
    if not by_name:
        figure.text(0.5, 0.5, "the configs have no parameters", ha="center")
    for position, (name, values) in enumerate(by_name.items(), start=1):
        axes = figure.add_subplot(1, len(by_name), position)
        labels = [str(value) for value in values]
        bottom = np.zeros(len(values))
        for part, color in (("wins", "tab:green"), ("ties", "tab:gray"), ("losses", "tab:red")):
            heights = np.array([getattr(record, part) for record in values.values()])
            axes.bar(labels, heights, bottom=bottom, color=color, label=part)
            bottom += heights
        axes.set_title(name)
        axes.set_ylabel("comparisons")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(axis="x", rotation=45)
        if position == 1:
            axes.legend(fontsize=7, title="ties: tie-broken", title_fontsize=7)
    return figure


def _reference_figure(
    result: RunResult, reference: ReferenceMetric, strengths: list[float]
) -> Figure:
    """Judge strength against the reference per config with both; the chosen config in orange."""
    shown = [
        index
        for index, strength in enumerate(strengths)
        if math.isfinite(strength) and result.config_id(index) in reference.values
    ]
    figure = Figure(figsize=(6.5, 5), layout="constrained")
    axes = figure.add_subplot()
    better = "higher" if reference.higher_is_better else "lower"
    axes.set_title(f"{result.run_key}: {reference.name} ({better} is better) by judge strength")
    axes.set_xlabel("judge strength (Bradley-Terry log-strength)")
    axes.set_ylabel(reference.name)
    if not shown:
        axes.text(0.5, 0.5, "no config has both a strength and a value", ha="center")
        return figure
    x = [strengths[index] for index in shown]
    y = [reference.values[result.config_id(index)] for index in shown]
    colors = ["tab:orange" if index == result.best else "tab:blue" for index in shown]
    axes.scatter(x, y, c=colors, s=[80 if index == result.best else 30 for index in shown])
    for index, px, py in zip(shown, x, y, strict=True):
        axes.annotate(_label(result, index, len(shown)), (px, py), fontsize=_label_size(len(shown)))
    return figure


_PAGES = Environment(
    loader=PackageLoader("coordinator", "templates"),
    autoescape=True,
    keep_trailing_newline=True,
    undefined=StrictUndefined,
)
_PAGES.filters["signed"] = lambda value: "-" if value is None else f"{value:+.3f}"
_PAGES.filters["percent"] = lambda value: "-" if value is None else f"{value:.1%}"


def _html(result: RunResult, summary: dict[str, Any]) -> str:
    """report.html from the template; every value is escaped there."""
    shown = FIGURES + ((REFERENCE_FIGURE,) if "reference_metric" in summary else ())
    page = _PAGES.get_template("report.html")
    return page.render(result=result, summary=summary, figures=shown)
