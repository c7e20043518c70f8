"""Plotly figures from the records (runs, epochs, histograms, compressions): no streamlit here.

Every page draws through these functions, so one method has one colour everywhere
(`METHOD_COLORS`) and every axis carries a title with its unit. Sizes are chosen to stay
readable on a projector (`FONT_SIZE`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import pareto_mask
from .methods import METHOD_SPECS
from .records import CompressionRecord, EpochMetrics, LayerHistogram
from .size import SizeReport

# One colour per compression method, on every page (Okabe-Ito, colour-blind safe): each method's own.
METHOD_COLORS: dict[str, str] = {name: method.color for name, method in METHOD_SPECS.items()}
METHOD_COLORS["budget"] = "#56B4E9"  # per-layer settings (core/budget.py): a family of their own
# One colour per regularizer where runs (not compressions) are drawn.
REG_COLORS: dict[str, str] = {"none": "#555555", "binary": "#CC79A7", "levels": "#009E73", "pq": "#56B4E9"}
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
REG_SYMBOLS = (
    "circle",
    "diamond",
    "square",
    "triangle-up",
    "x",
    "star",
    "cross",
    "triangle-down",
    "pentagon",
    "hexagon",
)
FONT_SIZE = 16

# Frontier x axes: column of CompressionRecord.row(), axis title, and whether larger is better.
SIZE_AXES: dict[str, tuple[str, bool]] = {
    "fc_ratio": ("FC compression ratio (float32 FC bits / compressed FC bits; log scale)", True),
    "model_ratio": ("model compression ratio (whole model; log scale)", True),
    "fc_bits": ("compressed FC size (bits; log scale)", False),
    "model_bits": ("compressed model size (bits; log scale)", False),
}
# The same axes with the codes as stored (entropy-coded where a compression is; the Frontier's switch).
SIZE_AXES |= {
    f"entropy_{name}": (title.replace("; log scale)", "; codes entropy-coded where they are; log scale)"), larger)
    for name, (title, larger) in SIZE_AXES.items()
}


# Marks that must read on a light and a dark background alike (the pages draw every chart with
# Streamlit's theme, which follows the viewer's light or dark setting).
NEUTRAL = "#888888"


def chart_text(text: object) -> str:
    """`text` as Plotly draws it literally: Plotly renders a few HTML tags in any text it draws
    (titles, axis titles, legend names, hover labels, annotations), `<a href>` as a real link, and
    decodes entities. '&', '<' and '>' become entities, so a layer name or a label from a stored
    file shows as the characters it is. The one escape of chart text; `_style` applies it to every
    title, axis title, annotation, trace name and slider label of a figure, and hover templates
    name their trace through `%{fullData.name}` instead of holding its text."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain_texts(fig: go.Figure) -> None:
    """Every text of the figure a caller may have built from outside text, through `chart_text`
    (once: each figure passes `_style` once). Hover templates and custom data are ours to escape."""
    layout = fig.layout
    if layout.title.text:
        layout.title.text = chart_text(layout.title.text)
    for name in [key for key in layout if key.startswith(("xaxis", "yaxis"))]:
        axis = layout[name]
        if axis.title.text:
            axis.title.text = chart_text(axis.title.text)
    for annotation in layout.annotations:
        if annotation.text:
            annotation.text = chart_text(annotation.text)
    for slider in layout.sliders:
        for step in slider.steps:
            if step.label:
                step.label = chart_text(step.label)
        if slider.currentvalue.prefix:
            slider.currentvalue.prefix = chart_text(slider.currentvalue.prefix)
    for trace in list(fig.data) + [t for frame in fig.frames for t in frame.data]:
        if trace.name:
            trace.name = chart_text(trace.name)


def _style(fig: go.Figure, title: str | None = None, height: int = 420) -> go.Figure:
    """Size, font and margins; no template: Streamlit's theme gives the colours of light or dark mode.
    Legends sit under the plot, so a phone-width screen keeps the plot its full width. Every text the
    figure draws goes through `chart_text`."""
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left") if title else None,
        height=height,
        font=dict(size=FONT_SIZE),
        margin=dict(l=60, r=10, t=70 if title else 30, b=50),
        legend=dict(font=dict(size=FONT_SIZE - 2), orientation="h", yanchor="top", y=-0.2, x=0),
    )
    _plain_texts(fig)
    return fig


def log_ticks(low: float, high: float, unit: str = "x") -> tuple[list[float], list[str]]:
    """Ticks of a log axis at 1, 2, 5, 10, 20, 50, ... between `low` and `high`, labelled as numbers
    a reader can take in at once: '1x', '20x', '500x' for ratios, '50k', '2M' for bits."""
    if not (low > 0 and high > 0 and math.isfinite(low) and math.isfinite(high)):
        return [], []
    values: list[float] = []
    decade = 10.0 ** math.floor(math.log10(low))
    while decade <= high * 10:
        for step in (1, 2, 5):
            value = step * decade
            if low / 1.5 <= value <= high * 1.5:
                values.append(value)
        decade *= 10
    return values, [_short(v) + (unit if unit == "x" else "") for v in values]


def _short(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:g}"


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "#333333")


# ------------------------------------------------------------------------------------ training


def training_curves(histories: Mapping[str, Sequence[EpochMetrics]]) -> go.Figure:
    """Loss, regularizer value and test accuracy per epoch, one panel under the other (side by side
    they overlap their titles and axis labels on a phone); one line colour per run label, a legend
    (under the chart, one row a run) only when there are several runs."""
    panels = (("loss", 1.0, "training loss", "loss (nats)"), ("reg", 1.0, "regularizer R(W)", "R(W) (unitless)"),
              ("test_accuracy", 100.0, "test accuracy", "accuracy (%)"))  # fmt: skip
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.1, subplot_titles=[panel[2] for panel in panels]
    )
    for index, (label, history) in enumerate(histories.items()):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        epochs = [row.epoch for row in history]
        for row, (key, scale, _, _) in enumerate(panels, start=1):
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=[getattr(metrics, key) * scale for metrics in history],
                    mode="lines+markers",
                    name=label,
                    line=dict(color=color, width=3),
                    legendgroup=label,
                    showlegend=row == 1,
                    hovertemplate=f"%{{fullData.name}}<br>epoch %{{x}}<br>{key} %{{y:.4g}}<extra></extra>",
                ),
                row=row,
                col=1,
            )
    for row, (_, _, _, axis_title) in enumerate(panels, start=1):
        fig.update_yaxes(title_text=axis_title, row=row, col=1)
        fig.update_xaxes(dtick=1 if _max_epochs(histories) <= 12 else None, row=row, col=1)
    fig.update_xaxes(title_text="epoch", row=3, col=1)
    several = len(histories) > 1
    legend_px = 28 * len(histories) if several else 0  # a row a run: long labels wrap on a phone
    fig = _style(fig, height=660 + legend_px)
    fig.update_layout(
        showlegend=several,
        margin=dict(b=60 + legend_px),
        legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, entrywidthmode="fraction",
                    entrywidth=1.0),
    )  # fmt: skip
    return fig


def _max_epochs(histories: Mapping[str, Sequence[EpochMetrics]]) -> int:
    return max((len(h) for h in histories.values()), default=0)


def _bin_centers(limit: float, n_bins: int) -> list[float]:
    width = 2 * limit / n_bins
    return [-limit + width * (i + 0.5) for i in range(n_bins)]


def weight_histogram(
    layer: LayerHistogram,
    title: str | None = None,
    color: str = "#0072B2",
    show_alpha: bool = True,
    height: int = 380,
    x_range: tuple[float, float] | None = None,
) -> go.Figure:
    """One FC layer's weight histogram with ±alpha drawn, on a fixed x range when given (one range for
    every epoch of a layer, so scrubbing the epochs never moves the axis)."""
    fig = weight_histograms_overlay(
        {"weights": layer}, title=title, colors=[color], show_alpha=show_alpha, height=height, legend=True
    )
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    return fig


def histogram_range(layers: Sequence[LayerHistogram]) -> tuple[float, float]:
    """One symmetric x range that holds every histogram given (a layer over its epochs, or several runs)."""
    limit = max((layer.limit for layer in layers), default=1.0)
    return (-1.05 * limit, 1.05 * limit)


def histogram_animation(
    frames: Sequence[LayerHistogram],
    labels: Sequence[str],
    title: str | None = None,
    color: str = "#0072B2",
    height: int = 440,
    start: int | None = None,
) -> go.Figure:
    """A layer's histogram at every epoch as Plotly frames, with a play button and an epoch slider:
    the collapse onto ±α played as an animation, on one fixed x and y range."""
    x_range = histogram_range(frames)
    y_max = max(100.0 * max(f.counts) / (sum(f.counts) or 1) for f in frames) * 1.1

    def traces(layer: LayerHistogram) -> list:
        total = sum(layer.counts) or 1
        bars = go.Bar(
            x=_bin_centers(layer.limit, len(layer.counts)),
            y=[100.0 * c / total for c in layer.counts],
            width=2 * layer.limit / len(layer.counts),
            marker_color=color,
            name="weights",
            hovertemplate="w ≈ %{x:.3g}<br>%{y:.2f}% of weights<extra></extra>",
        )
        alpha = go.Scatter(
            x=[-layer.alpha, -layer.alpha, None, layer.alpha, layer.alpha],
            y=[0, y_max, None, 0, y_max],
            mode="lines",
            line=dict(color=NEUTRAL, dash="dash", width=2),
            name=f"±α = ±{layer.alpha:.3g}",
        )
        return [bars, alpha]

    first = len(frames) - 1 if start is None else start
    fig = go.Figure(
        data=traces(frames[first]),
        frames=[go.Frame(data=traces(layer), name=label) for layer, label in zip(frames, labels)],
    )
    steps = [
        dict(
            method="animate",
            label=label,
            args=[[label], dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))],
        )
        for label in labels
    ]
    play = dict(frame=dict(duration=500, redraw=True), transition=dict(duration=200), fromcurrent=False)
    pause = dict(frame=dict(duration=0, redraw=False), mode="immediate")
    # the epoch slider spans the width under the axis title, the buttons sit on their own row under
    # it: side by side, the buttons covered the slider's "epoch N" label on a phone
    fig.update_layout(
        updatemenus=[
            dict(
                type="buttons",
                direction="left",
                showactive=False,
                x=0,
                y=-0.68,
                xanchor="left",
                yanchor="top",
                buttons=[
                    dict(label="▶ play", method="animate", args=[None, play]),
                    dict(label="❚❚ pause", method="animate", args=[[None], pause]),
                ],
            )
        ],
        sliders=[
            dict(active=first, steps=steps, x=0, y=-0.3, len=1.0, yanchor="top", currentvalue=dict(prefix="epoch "))
        ],
    )
    fig.update_xaxes(title_text="weight value", range=list(x_range))
    fig.update_yaxes(title_text="share of weights (%)", range=[0, y_max])
    fig = _style(fig, title, height + 80)
    fig.update_layout(legend=dict(y=1.0, yanchor="bottom"), margin=dict(b=210))
    return fig


def weight_histograms_overlay(
    layers: Mapping[str, LayerHistogram],
    title: str | None = None,
    colors: Sequence[str] | None = None,
    show_alpha: bool = True,
    height: int = 380,
    legend: bool = True,
) -> go.Figure:
    """Several histograms of one layer (e.g. before / after training) on one axis, as fractions."""
    colors = list(colors or RUN_COLORS)
    fig = go.Figure()
    for index, (label, layer) in enumerate(layers.items()):
        color = colors[index % len(colors)]
        counts = layer.counts
        total = sum(counts) or 1
        fig.add_trace(
            go.Bar(
                x=_bin_centers(layer.limit, len(counts)),
                y=[100.0 * c / total for c in counts],
                name=label,
                marker_color=color,
                opacity=0.65 if len(layers) > 1 else 0.9,
                width=2 * layer.limit / len(counts),
                hovertemplate="%{fullData.name}<br>w ≈ %{x:.3g}<br>%{y:.2f}% of weights<extra></extra>",
            )
        )
        if show_alpha:
            # ±alpha as dashed lines, its value in the legend: no floating labels to overlap
            line_color = NEUTRAL if len(layers) == 1 else color
            for sign in (-1, 1):
                fig.add_vline(x=sign * layer.alpha, line=dict(color=line_color, dash="dash", width=2))
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="lines",
                    line=dict(color=line_color, dash="dash", width=2),
                    name=f"±α = ±{layer.alpha:.3g}" + (f" ({label})" if len(layers) > 1 else ""),
                )
            )
    fig.update_layout(barmode="overlay", showlegend=legend)
    fig.update_xaxes(title_text="weight value")
    fig.update_yaxes(title_text="share of weights (%)")
    return _style(fig, title, height)


HISTOGRAM_BINS = 101


def _binned(values: np.ndarray, edges: np.ndarray, percent: bool, name: str, color: str, opacity: float) -> go.Bar:
    """A histogram binned here, not in the browser: 101 bars instead of every value sent and binned on
    each redraw (50,000 values made this figure the slowest part of a slider move)."""
    counts, _ = np.histogram(values, bins=edges)
    heights = counts * (100.0 / max(1, len(values))) if percent else counts
    return go.Bar(
        x=(edges[:-1] + edges[1:]) / 2,
        y=heights,
        width=float(edges[1] - edges[0]),
        name=name,
        marker=dict(color=color, line=dict(width=0)),
        opacity=opacity,
    )


def centroid_histogram(
    weights: Sequence[float],
    centroids: Sequence[float],
    title: str | None = None,
    method: str = "kmeans",
    height: int = 380,
    pruned: Sequence[float] | None = None,
) -> go.Figure:
    """Histogram of a layer's float weights with the 1-D centroids that replace them drawn on top; with
    pruning, `weights` are the survivors and `pruned` the float values of the weights set to zero, drawn
    apart (both then in counts, on the same bins, so that their areas compare)."""
    survivors = np.asarray(weights, dtype=np.float64)
    zeroed = None if pruned is None else np.asarray(pruned, dtype=np.float64)
    every = survivors if zeroed is None else np.concatenate([survivors, zeroed])
    low, high = (float(every.min()), float(every.max())) if every.size else (-1.0, 1.0)
    if high <= low:  # one value: a bar of its own width
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    fig = go.Figure()
    name = "trained weights (float)" if zeroed is None else "surviving weights (float, coded)"
    fig.add_trace(_binned(survivors, edges, zeroed is None, name, "#999999", 1.0))
    if zeroed is not None:
        label = f"pruned weights ({len(zeroed):,} shown; stored as exact 0)"
        fig.add_trace(_binned(zeroed, edges, False, label, NEUTRAL, 0.45))
    fig.update_layout(barmode="overlay", bargap=0)
    color = method_color(method)
    centroids = sorted({float(c) for c in centroids})
    if len(centroids) <= 64:  # the lines as one trace: a shape each (add_vline) costs a validation each
        top = max(float(np.max(np.asarray(bar.y))) for bar in fig.data) * 1.05
        fig.add_trace(
            go.Scatter(
                x=[x for value in centroids for x in (value, value, None)],
                y=[y for _ in centroids for y in (0.0, top, None)],
                mode="lines",
                line=dict(color=color, width=2),
                hoverinfo="x",
                showlegend=False,
            )
        )
    # A legend entry (and, for many centroids, the only mark): centroids as a rug along the bottom.
    fig.add_trace(
        go.Scatter(
            x=centroids,
            y=[0] * len(centroids),
            mode="markers",
            name=f"centroids ({len(centroids)})",
            marker=dict(color=color, symbol="line-ns-open", size=18, line=dict(width=2)),
        )
    )
    fig.update_xaxes(title_text="weight value")
    fig.update_yaxes(title_text="share of weights (%)" if zeroed is None else "weights")
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return _style(fig, title, height)


def subvector_scatter(
    points: Sequence[Sequence[float]],
    centroids: Sequence[Sequence[float]],
    title: str | None = None,
    method: str = "pq",
    height: int = 460,
) -> go.Figure:
    """2-D subvectors (d = 2) as grey dots and their centroids as large coloured crosses."""
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            mode="markers",
            name=f"subvectors ({len(points):,} shown)",
            marker=dict(color="#999999", size=4, opacity=0.5),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[c[0] for c in centroids],
            y=[c[1] for c in centroids],
            mode="markers",
            name=f"centroids ({len(centroids)})",
            marker=dict(color=method_color(method), size=11, symbol="x", line=dict(width=1, color="white")),
        )
    )
    fig.update_xaxes(title_text="first weight of the subvector")
    fig.update_yaxes(title_text="second weight of the subvector", scaleanchor="x", scaleratio=1)
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return _style(fig, title, height)


def bits_breakdown(size: SizeReport, title: str | None = None, height: int = 300) -> go.Figure:
    """Where the bits go: codes, codebooks, scales and the float rest (a SizeReport as a dict),
    next to the uncompressed model, in kilobits."""
    parts = [
        ("codes", size.code_bits, "#0072B2"),
        ("codebooks", size.codebook_bits, "#E69F00"),
        ("scales (α)", size.scale_bits, "#D55E00"),
        ("float rest (biases, convs)", size.rest_bits, "#999999"),
    ]
    fig = go.Figure()
    for name, bits, color in parts:
        fig.add_trace(
            go.Bar(
                y=["compressed"],
                x=[bits / 1000],
                name=name,
                orientation="h",
                marker_color=color,
                hovertemplate=f"{name}: {bits:,} bits<extra></extra>",
            )
        )
    fig.add_trace(
        go.Bar(
            y=["float32"],
            x=[size.fc_float_bits / 1000],
            name="FC weights (float32)",
            orientation="h",
            marker_color="#CCCCCC",
            hovertemplate=f"FC weights: {size.fc_float_bits:,} bits<extra></extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            y=["float32"],
            x=[size.rest_bits / 1000],
            name="float rest",
            orientation="h",
            marker_color="#999999",
            showlegend=False,
            hovertemplate=f"float rest: {size.rest_bits:,} bits<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="size (kilobits)", type="log" if size.model_float_bits > 50 * size.model_bits else None)
    fig = _style(fig, title, height + 120)
    # the legend at the bottom of the figure, under the axis title, one entry a row: above the plot (or
    # two a row) it wrapped into the title and the axis title, and cut its labels, on a phone
    fig.update_layout(
        barmode="stack",
        margin=dict(b=180),
        legend=dict(orientation="v", yref="container", y=0, yanchor="bottom", x=0),
    )
    return fig


# ------------------------------------------------------------------------------------ frontier


def run_group_labels(points: Sequence[CompressionRecord]) -> list[str]:
    """A legend label per point that tells runs apart: method and regularizer, plus the epochs, the
    seed and the network where the points differ in them (and only there)."""
    configs = [p.train_config for p in points]
    differs = {
        name: len({getattr(c, name) for c in configs}) > 1 for name in ("epochs", "seed", "model", "hidden", "dataset")
    }
    labels = []
    for point, cfg in zip(points, configs):
        method = point.compress_config.family + (" +conv" if point.compress_config.targets == "fc+conv" else "")
        parts = [method, cfg.label()]
        if differs["dataset"]:
            parts.append(cfg.dataset)
        if differs["model"] or differs["hidden"]:
            parts.append(cfg.model + (" " + "-".join(map(str, cfg.hidden)) if cfg.model == "mlp" else ""))
        if differs["epochs"]:
            parts.append(f"{cfg.epochs} ep")
        if differs["seed"]:
            parts.append(f"seed {cfg.seed}")
        labels.append(" · ".join(parts))
    return labels


def _hover_data(part: pd.DataFrame) -> list:
    """The frontier's custom data with its text columns through `chart_text`: hover labels draw them
    as HTML."""
    rows = part.values.tolist()
    return [[chart_text(v) if isinstance(v, str) else v for v in row] for row in rows]


def frontier_figure(
    points: Sequence[CompressionRecord],
    pareto: Sequence[bool] | None = None,
    x: str = "fc_ratio",
    show_dominated: bool = True,
    title: str | None = None,
    height: int = 600,
) -> go.Figure:
    """Accuracy against size for every (run, compression) point: colour = method, symbol = the run
    (regularizer and λ, and epochs / seed where they differ), the Pareto-optimal set (`pareto`, one
    flag a point, as the caller computed it with `core.analysis.pareto_mask`; computed here when
    not given) ringed and joined by a line. Each marker's customdata[0] is its index in `points`, so
    a selection maps back to the record."""
    axis_title, larger_is_better = SIZE_AXES[x]
    fig = go.Figure()
    if not points:
        fig.add_annotation(text="no compressions to show", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return _style(fig, title, height)
    df = pd.DataFrame([p.row() for p in points])
    df["index"] = range(len(points))
    df["acc_pct"] = 100.0 * df["accuracy"]
    df["drop_pts"] = 100.0 * df["accuracy_drop"]
    df["group"] = run_group_labels(points)
    df["pareto"] = (
        list(pareto) if pareto is not None else pareto_mask(df[x].tolist(), df["accuracy"].tolist(), larger_is_better)
    )
    groups = sorted(df["group"].unique(), key=lambda g: ("none (λ=0)" not in g, g))
    runs = sorted({g.split(" · ", 1)[1] for g in groups})
    symbols = {run: REG_SYMBOLS[i % len(REG_SYMBOLS)] for i, run in enumerate(runs)}
    shown = df if show_dominated else df[df["pareto"]]
    fields = ["index", "label", "reg_label", "epochs", "seed", "float_accuracy", "drop_pts", "fc_ratio",
              "model_ratio", "fc_bits", "file_bytes", "run_id"]  # fmt: skip
    for method in [m for m in METHOD_COLORS if m in set(shown["method"])]:
        for group in groups:
            part = shown[(shown["method"] == method) & (shown["group"] == group)]
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part[x],
                    y=part["acc_pct"],
                    mode="markers",
                    name=group,
                    marker=dict(
                        color=method_color(method),
                        symbol=symbols[group.split(" · ", 1)[1]],
                        size=13,
                        line=dict(width=[3 if p else 0 for p in part["pareto"]], color=NEUTRAL),
                    ),
                    customdata=_hover_data(part[fields]),
                    hovertemplate=(
                        "<b>%{customdata[1]}</b> · run %{customdata[11]}<br>"
                        "%{customdata[2]}, %{customdata[3]} epochs, seed %{customdata[4]}<br>"
                        "accuracy %{y:.2f}% (float %{customdata[5]:.2%}, drop %{customdata[6]:.2f} points)<br>"
                        "FC ratio %{customdata[7]:.2f}x · model ratio %{customdata[8]:.2f}x<br>"
                        "FC bits %{customdata[9]:,} · file %{customdata[10]:,} bytes<extra></extra>"
                    ),
                )
            )
    front = df[df["pareto"]].sort_values(x)
    fig.add_trace(
        go.Scatter(
            x=front[x],
            y=front["acc_pct"],
            mode="lines",
            name="Pareto front",
            line=dict(color=NEUTRAL, width=2, dash="dot"),
            hoverinfo="skip",
        )
    )
    tickvals, ticktext = log_ticks(float(shown[x].min()), float(shown[x].max()), "x" if "ratio" in x else "")
    fig.update_xaxes(title_text=axis_title, type="log", tickvals=tickvals, ticktext=ticktext)
    fig.update_yaxes(title_text="test accuracy (%)")
    fig = _style(fig, title, height)
    fig.update_layout(legend=dict(y=-0.3))  # below the axis title, which sits lower with its 16 px font
    return fig


# ---------------------------------------------------------------------------------------- toys


def toy_weights_figure(
    initial: Sequence[float], final: Sequence[float], alpha: float, lam: float, height: int = 380
) -> go.Figure:
    """The Learn page's toy: a weight cloud before and after gradient descent with the double well."""
    fig = go.Figure()
    fig.add_trace(
        go.Histogram(
            x=list(initial), nbinsx=80, name="initial weights", marker_color="#999999", opacity=0.6, histnorm="percent"
        )
    )
    fig.add_trace(
        go.Histogram(
            x=list(final),
            nbinsx=80,
            name=f"after descent, λ={lam:g}",
            marker_color=REG_COLORS["binary"],
            opacity=0.75,
            histnorm="percent",
        )
    )
    for sign in (-1, 1):
        fig.add_vline(x=sign * alpha, line=dict(color=NEUTRAL, dash="dash", width=2))
    fig.update_layout(barmode="overlay", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    fig.update_xaxes(title_text="weight value (±α dashed)")
    fig.update_yaxes(title_text="share of weights (%)")
    return _style(fig, None, height)


def toy_pq_figure(
    points: Sequence[Sequence[float]], centroids: Sequence[Sequence[float]], codes: Sequence[int], height: int = 460
) -> go.Figure:
    """2-D points coloured by their centroid (one legend entry a cluster, in its colour), the
    centroids as crosses in their cluster's colour."""
    fig = go.Figure()
    palette = RUN_COLORS
    for cluster, centroid in enumerate(centroids):
        members = [p for p, c in zip(points, codes) if c == cluster]
        color = palette[cluster % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in members],
                y=[p[1] for p in members],
                mode="markers",
                name=f"cluster {cluster + 1} ({len(members)} points)",
                legendgroup=str(cluster),
                marker=dict(color=color, size=6, opacity=0.6),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[centroid[0]],
                y=[centroid[1]],
                mode="markers",
                name=f"centroid {cluster + 1}",
                legendgroup=str(cluster),
                showlegend=False,
                marker=dict(color=color, size=16, symbol="x", line=dict(width=2, color=NEUTRAL)),
            )
        )
    fig.update_xaxes(title_text="first coordinate")
    fig.update_yaxes(title_text="second coordinate", scaleanchor="x", scaleratio=1)
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return _style(fig, None, height)


def nice_ratio(value: float) -> str:
    return f"{value:,.2f}x" if math.isfinite(value) else "n/a"


# ------------------------------------------------------------------------- the three stages (Learn)


def pruned_histogram(
    kept: Sequence[float],
    pruned: Sequence[float],
    centroids: Sequence[float] = (),
    method: str = "kmeans",
    height: int = 360,
) -> go.Figure:
    """A weight's values in counts on one set of bins: the survivors, and the pruned ones (the smallest
    |w|, stored as exact zeros) drawn apart, with the threshold at ±(largest pruned |w|) dashed; with
    `centroids` (1-D), the values that replace the survivors, as lines in the method's colour."""
    kept_values, pruned_values = np.asarray(kept, dtype=float), np.asarray(pruned, dtype=float)  # arrays: 5x faster
    limit = float(np.abs(np.concatenate([kept_values, pruned_values])).max(initial=0.0)) or 1.0
    bins = dict(start=-limit, end=limit, size=2 * limit / 101)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=kept_values, xbins=bins, name=f"kept ({len(kept):,})", marker_color="#0072B2"))
    if len(pruned):
        fig.add_trace(
            go.Histogram(
                x=pruned_values, xbins=bins, name=f"pruned ({len(pruned):,}; stored as exact 0)",
                marker_color=NEUTRAL, opacity=0.6,
            )
        )  # fmt: skip
    # lines as layout shapes: add_vline takes a tenth of a second each, which a slider's answer cannot spare
    lines = []
    if len(pruned):
        threshold = float(np.abs(pruned_values).max())
        lines += [(sign * threshold, NEUTRAL, "dash") for sign in (-1, 1)]
    color = method_color(method)
    values = sorted({float(c) for c in centroids})
    lines += [(value, color, "solid") for value in values]
    fig.update_layout(
        shapes=[
            dict(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, line=dict(color=c, dash=dash, width=2))
            for x, c, dash in lines
        ]
    )
    if values:  # a legend entry for the centroids: a rug along the bottom
        fig.add_trace(
            go.Scatter(
                x=values, y=[0] * len(values), mode="markers", name=f"centroids ({len(values)})",
                marker=dict(color=color, symbol="line-ns-open", size=18, line=dict(width=2)),
            )
        )  # fmt: skip
    fig.update_layout(barmode="overlay", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    fig.update_xaxes(title_text="weight value" + (" (pruning threshold dashed)" if len(pruned) else ""))
    fig.update_yaxes(title_text="weights")
    return _style(fig, None, height)


def code_usage_figure(counts: Sequence[int], method: str = "pq", height: int = 340) -> go.Figure:
    """How often each code occurs, most used first, against the even use (n / k each) that a bit-packed
    code of log2 k bits is best for: the more uneven, the more an entropy coder saves."""
    ordered = sorted((int(c) for c in counts), reverse=True)
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=list(range(1, len(ordered) + 1)),
            y=ordered,
            name="codes, most used first",
            marker_color=method_color(method),
            hovertemplate="rank %{x}: %{y:,} codes<extra></extra>",
        )
    )
    even = sum(ordered) / max(1, len(ordered))
    fig.update_layout(
        shapes=[dict(type="line", xref="paper", yref="y", x0=0, x1=1, y0=even, y1=even,
                     line=dict(color=NEUTRAL, dash="dash", width=2))]
    )  # fmt: skip
    fig.update_xaxes(title_text="code, by how often it is used (rank)")
    fig.update_yaxes(title_text="occurrences (even use dashed)")
    fig.update_layout(showlegend=False)
    return _style(fig, None, height)


def stage_ledger_figure(stages: Sequence[tuple[str, int, float]], height: int = 320) -> go.Figure:
    """(stage, bits, ratio) of each stage as bars of the coded layers' size, each labelled with its ratio."""
    fig = go.Figure()
    bits = [b for _, b, _ in stages]
    fig.add_trace(
        go.Bar(
            x=[chart_text(stage) for stage, _, _ in stages],
            y=bits,
            text=[nice_ratio(ratio) for _, _, ratio in stages],
            textposition="outside",
            marker_color=["#CCCCCC", *["#0072B2"] * (len(stages) - 1)],
            hovertemplate="%{x}: %{y:,} bits<extra></extra>",
            cliponaxis=False,
        )
    )
    tickvals, ticktext = log_ticks(min(bits), max(bits), "")
    fig.update_xaxes(title_text="after the stage")
    fig.update_yaxes(
        title_text="coded layers' size (bits; log scale)", type="log", tickvals=tickvals, ticktext=ticktext
    )
    fig.update_layout(showlegend=False)
    return _style(fig, None, height)
