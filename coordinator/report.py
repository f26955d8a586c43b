"""The run report (`pandalm-coordinator report RUN --out DIR`): HTML, PNG figures, JSON summary.

Only config ids, parameters and tallies go in; the report shows the selected config and its
margin, the pairwise win/tie/loss matrix, a superiority graph (an edge A -> B where A beats B by
at least `threshold` in (wins - losses) / items, as in the PandaLM paper's Figure 4) and the
comparisons won per hyperparameter value (the paper's Figure 8).

A pair's tallies are summed over all its recorded chunks (and over both orientations, should a
pair have been asked both ways) before anything is computed from them; pairs with no judged
items count for nothing. The best config's margin is (wins - losses) / items from its own point
of view in its deciding comparison: the last recorded comparison it took part in, which in the
paper and adaptive modes is the one that made it the winner.

Figures are drawn on matplotlib `Figure` objects with the Agg canvas, never through pyplot's
global state, so the report renders on a headless coordinator.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from coordinator.selection import Tally, comparison_winner

ParamValue = str | int | float
FIGURES = ("matrix.png", "superiority.png", "hyperparameters.png")


@dataclass(frozen=True)
class RunResult:
    """What a finished (or stopped) run leaves for its report; comparisons may hold one entry
    per chunk of a pair."""

    run_name: str
    selection_mode: str
    configs: Sequence[tuple[str, Mapping[str, ParamValue]]]
    comparisons: Sequence[tuple[int, int, Tally]]
    best: int | None
    sites: Sequence[str]
    sites_left_out: Sequence[str]
    judgments: int
    wall_seconds: float
    aggregation: str = ""
    """How the tallies were summed (SecAgg+ or in the clear, and why)."""

    def __post_init__(self) -> None:
        indices = {i for a, b, _ in self.comparisons for i in (a, b)}
        if self.best is not None:
            indices.add(self.best)
        if indices and not (min(indices) >= 0 and max(indices) < len(self.configs)):
            raise ValueError(f"config index out of range 0..{len(self.configs) - 1}")

    def config_id(self, index: int) -> str:
        return self.configs[index][0]


def pair_tallies(result: RunResult) -> dict[tuple[int, int], Tally]:
    """Each compared pair once, in the orientation first recorded, its tallies summed."""
    totals: dict[tuple[int, int], Tally] = {}
    for a, b, tally in result.comparisons:
        if (b, a) in totals:
            totals[b, a] += tally.reversed()
        else:
            totals[a, b] = totals.get((a, b), Tally()) + tally
    return totals


def superiority_edges(result: RunResult, threshold: float = 0.1) -> list[tuple[int, int]]:
    """(winner, loser) for every pair where (wins - losses) / items >= threshold."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    edges = []
    for (a, b), tally in pair_tallies(result).items():
        if tally.margin >= threshold:
            edges.append((a, b))
        elif -tally.margin >= threshold:
            edges.append((b, a))
    return edges


def wins_by_hyperparameter(result: RunResult) -> dict[str, dict[ParamValue, int]]:
    """Per hyperparameter, per value: comparisons won by configs with that value. Every value that
    occurs among the configs is listed, with 0 when its configs won nothing."""
    counts: dict[str, dict[ParamValue, int]] = {}
    for _, params in result.configs:
        for name, value in params.items():
            counts.setdefault(name, {}).setdefault(value, 0)
    for (a, b), tally in pair_tallies(result).items():
        if tally.items:
            for name, value in result.configs[comparison_winner(a, b, tally)][1].items():
                counts[name][value] += 1
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


def write_report(result: RunResult, out_dir: Path, threshold: float = 0.1) -> dict[str, Any]:
    """Write report.html, the figures and summary.json into `out_dir`; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _summary(result, threshold)
    _save(_matrix_figure(result), out_dir / "matrix.png")
    _save(_superiority_figure(result, threshold), out_dir / "superiority.png")
    _save(_hyperparameter_figure(result), out_dir / "hyperparameters.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.html").write_text(_html(result, summary))
    return summary


def _value_order(item: tuple[ParamValue, int]) -> tuple[bool, Any]:
    return isinstance(item[0], str), item[0]


def _summary(result: RunResult, threshold: float) -> dict[str, Any]:
    best = None
    if result.best is not None:
        best_id, best_params = result.configs[result.best]
        best = {"index": result.best, "id": best_id, "params": dict(best_params)}
    decided = deciding_comparison(result)
    comparisons = []
    for (a, b), tally in pair_tallies(result).items():
        winner = comparison_winner(a, b, tally) if tally.items else None
        comparisons.append(
            {
                "a": result.config_id(a),
                "b": result.config_id(b),
                **asdict(tally),
                "margin": tally.margin,
                "winner": None if winner is None else result.config_id(winner),
            }
        )
    return {
        "run": result.run_name,
        "selection_mode": result.selection_mode,
        "best_config": best,
        "margin": None if decided is None else decided[1].margin,
        "deciding_comparison": None
        if decided is None
        else {"opponent": result.config_id(decided[0]), **asdict(decided[1])},
        "sites": list(result.sites),
        "sites_left_out": list(result.sites_left_out),
        "aggregation": result.aggregation,
        "judgments": result.judgments,
        "wall_seconds": result.wall_seconds,
        "superiority_threshold": threshold,
        "superiority_edges": [
            [result.config_id(a), result.config_id(b)]
            for a, b in superiority_edges(result, threshold)
        ],
        "wins_by_hyperparameter": {
            name: {str(value): count for value, count in values.items()}
            for name, values in wins_by_hyperparameter(result).items()
        },
        "comparisons": comparisons,
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
    all); blank where the pair was not compared."""
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
    if n <= 12:
        for (row, column), tally in counts.items():
            text = f"{tally.win}/{tally.tie}/{tally.loss}"
            axes.text(column, row, text, ha="center", va="center", fontsize=7)
    axes.set_title(f"{result.run_name}: win/tie/loss, row against column")
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
        f"{result.run_name}: A -> B where A beats B by (win - loss) / items >= {threshold}"
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
    wins = wins_by_hyperparameter(result)
    figure = Figure(figsize=(3.2 * max(len(wins), 1), 3.6), layout="constrained")
    if not wins:
        figure.text(0.5, 0.5, "the configs have no parameters", ha="center")
    for position, (name, values) in enumerate(wins.items(), start=1):
        axes = figure.add_subplot(1, len(wins), position)
        axes.bar([str(value) for value in values], list(values.values()), color="tab:blue")
        axes.set_title(name)
        axes.set_ylabel("comparisons won")
        axes.tick_params(axis="x", rotation=45)
    return figure


def _html(result: RunResult, summary: dict[str, Any]) -> str:
    e = html.escape
    best = summary["best_config"]
    if best is None:
        best_section = "<p>No config has been selected yet.</p>"
    else:
        params = "".join(
            f"<tr><th>{e(str(name))}</th><td>{e(str(value))}</td></tr>"
            for name, value in best["params"].items()
        )
        decided = summary["deciding_comparison"]
        margin = (
            "<p>No comparison yet.</p>"
            if decided is None
            else f"<p>Margin {summary['margin']:+.3f} ((wins - losses) / items) against "
            f"<code>{e(decided['opponent'])}</code>: {decided['win']} wins, {decided['tie']} "
            f"ties, {decided['loss']} losses, {decided['invalid']} invalid of "
            f"{decided['items']} items.</p>"
        )
        best_section = f"<p>Config <code>{e(best['id'])}</code></p><table>{params}</table>{margin}"
    rows = "".join(
        f"<tr><td><code>{e(c['a'])}</code></td><td><code>{e(c['b'])}</code></td>"
        f"<td>{c['win']}</td><td>{c['tie']}</td><td>{c['loss']}</td><td>{c['invalid']}</td>"
        f"<td>{c['items']}</td><td>{c['margin']:+.3f}</td>"
        f"<td><code>{e(c['winner'] or '-')}</code></td></tr>"
        for c in summary["comparisons"]
    )
    configs = "".join(
        f"<tr><td>{index}</td><td><code>{e(config_id)}</code></td><td>"
        f"{e(', '.join(f'{name}={value}' for name, value in params.items()))}</td></tr>"
        for index, (config_id, params) in enumerate(result.configs)
    )
    figures = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in FIGURES)
    left_out = ", ".join(result.sites_left_out) or "none"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(result.run_name)}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>Run {e(result.run_name)}</h1>
<p>Selection mode {e(result.selection_mode)}; {result.judgments} judgments;
{result.wall_seconds:.0f} s.</p>
<p>Sites: {e(", ".join(result.sites) or "none")}. Left out: {e(left_out)}.
Aggregation: {e(result.aggregation or "-")}.</p>
<h2>Best config</h2>
{best_section}
<h2>Figures</h2>
{figures}
<h2>Comparisons</h2>
<table><tr><th>a</th><th>b</th><th>win</th><th>tie</th><th>loss</th><th>invalid</th>
<th>items</th><th>margin</th><th>winner</th></tr>{rows}</table>
<h2>Configs</h2>
<table><tr><th>index</th><th>id</th><th>parameters</th></tr>{configs}</table>
</body></html>
"""
