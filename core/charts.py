"""Plotly figures from the records (runs, epochs, histograms, compressions): no streamlit here.

Every page draws through these functions, so one method has one colour everywhere
(`METHOD_COLORS`) and every axis carries a title with its unit. Sizes are chosen to stay
readable on a projector (`FONT_SIZE`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .experiments import pareto_mask
from .records import CompressionRecord, EpochMetrics, LayerHistogram
from .size import SizeReport

# One colour per compression method, on every page (Okabe-Ito, colour-blind safe).
METHOD_COLORS: dict[str, str] = {
    "float": "#555555",
    "binarize": "#D55E00",
    "kmeans": "#E69F00",
    "pq": "#0072B2",
}
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
    "fc_ratio": ("FC compression ratio (x, float32 FC bits / compressed FC bits)", True),
    "model_ratio": ("model compression ratio (x, whole model)", True),
    "fc_bits": ("compressed FC size (bits)", False),
    "model_bits": ("compressed model size (bits)", False),
}


def _style(fig: go.Figure, title: str | None = None, height: int = 420) -> go.Figure:
    fig.update_layout(
        title=title,
        height=height,
        font=dict(size=FONT_SIZE),
        margin=dict(l=70, r=20, t=100 if title else 40, b=60),
        legend=dict(font=dict(size=FONT_SIZE - 2)),
        template="plotly_white",
    )
    return fig


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "#333333")


# ------------------------------------------------------------------------------------ training


def training_curves(histories: Mapping[str, Sequence[EpochMetrics]]) -> go.Figure:
    """Loss, regularizer value and test accuracy per epoch; one line colour per run label."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("training loss", "regularizer R(W)", "test accuracy"))
    for index, (label, history) in enumerate(histories.items()):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        epochs = [row.epoch for row in history]
        for col, (key, scale) in enumerate((("loss", 1.0), ("reg", 1.0), ("test_accuracy", 100.0)), start=1):
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=[getattr(row, key) * scale for row in history],
                    mode="lines+markers",
                    name=label,
                    line=dict(color=color, width=3),
                    legendgroup=label,
                    showlegend=col == 1,
                    hovertemplate=f"{label}<br>epoch %{{x}}<br>{key} %{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="epoch", row=1, col=col, dtick=1 if _max_epochs(histories) <= 12 else None)
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)
    fig.update_yaxes(title_text="R(W) (unitless)", row=1, col=2)
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=3)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.25, x=0))
    return _style(fig, height=420)


def _max_epochs(histories: Mapping[str, Sequence[EpochMetrics]]) -> int:
    return max((len(h) for h in histories.values()), default=0)


def _bin_centers(limit: float, n_bins: int) -> list[float]:
    width = 2 * limit / n_bins
    return [-limit + width * (i + 0.5) for i in range(n_bins)]


def weight_histogram(
    layer: LayerHistogram, title: str | None = None, color: str = "#0072B2", show_alpha: bool = True, height: int = 380
) -> go.Figure:
    """One FC layer's weight histogram with ±alpha drawn."""
    return weight_histograms_overlay(
        {"weights": layer}, title=title, colors=[color], show_alpha=show_alpha, height=height, legend=False
    )


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
                hovertemplate=f"{label}<br>w ≈ %{{x:.3g}}<br>%{{y:.2f}}% of weights<extra></extra>",
            )
        )
        if show_alpha:
            for sign in (-1, 1):
                # one histogram: black lines stand out against the bars; several: each in its colour
                line_color = "black" if len(layers) == 1 else color
                fig.add_vline(x=sign * layer.alpha, line=dict(color=line_color, dash="dash", width=2))
            fig.add_annotation(
                x=layer.alpha,
                y=1 - 0.08 * index,
                yref="paper",
                text=f" +α={layer.alpha:.3g}",
                showarrow=False,
                xanchor="left",
                yanchor="top",
                font=dict(color="black" if len(layers) == 1 else color),
                bgcolor="rgba(255,255,255,0.7)",
            )
    fig.update_layout(barmode="overlay", showlegend=legend)
    fig.update_xaxes(title_text="weight value")
    fig.update_yaxes(title_text="share of weights (%)")
    return _style(fig, title, height)


def centroid_histogram(
    weights: Sequence[float],
    centroids: Sequence[float],
    title: str | None = None,
    method: str = "kmeans",
    height: int = 380,
) -> go.Figure:
    """Histogram of a layer's float weights with the 1-D centroids that replace them drawn on top."""
    fig = go.Figure()
    fig.add_trace(
        go.Histogram(
            x=list(weights), nbinsx=101, name="trained weights (float)", marker_color="#999999", histnorm="percent"
        )
    )
    color = method_color(method)
    centroids = sorted({float(c) for c in centroids})
    if len(centroids) <= 64:
        for value in centroids:
            fig.add_vline(x=value, line=dict(color=color, width=2))
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
    fig.update_yaxes(title_text="share of weights (%)")
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
    fig.update_layout(barmode="stack", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    fig.update_xaxes(title_text="size (kilobits)", type="log" if size.model_float_bits > 50 * size.model_bits else None)
    return _style(fig, title, height)


# ------------------------------------------------------------------------------------ frontier


def frontier_figure(
    points: Sequence[CompressionRecord],
    pareto: Sequence[bool] | None = None,
    x: str = "fc_ratio",
    show_dominated: bool = True,
    title: str | None = None,
    height: int = 560,
) -> go.Figure:
    """Accuracy against size for every (run, compression) point: colour = method, symbol =
    regularizer and lam, the Pareto-optimal set (`pareto`, one flag a point, as the caller
    computed it with `core.experiments.pareto_mask`; computed here when not given) joined by a line."""
    df = pd.DataFrame([p.row() for p in points])
    axis_title, larger_is_better = SIZE_AXES[x]
    fig = go.Figure()
    if df.empty:
        fig.add_annotation(text="no compressions stored yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return _style(fig, title, height)
    df = df.copy()
    df["acc_pct"] = 100.0 * df["accuracy"]
    df["regularizer"] = df["reg_label"]
    df["pareto"] = (
        list(pareto) if pareto is not None else pareto_mask(df[x].tolist(), df["accuracy"].tolist(), larger_is_better)
    )
    reg_order = sorted(df["regularizer"].unique(), key=lambda s: (s != "none (λ=0)", s))
    symbols = {label: REG_SYMBOLS[i % len(REG_SYMBOLS)] for i, label in enumerate(reg_order)}
    shown = df if show_dominated else df[df["pareto"]]
    for method in [m for m in METHOD_COLORS if m in set(shown["method"])]:
        for regularizer in reg_order:
            part = shown[(shown["method"] == method) & (shown["regularizer"] == regularizer)]
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part[x],
                    y=part["acc_pct"],
                    mode="markers",
                    name=f"{method} · {regularizer}",
                    marker=dict(
                        color=method_color(method),
                        symbol=symbols[regularizer],
                        size=13,
                        line=dict(width=1.5, color=["black" if p else "white" for p in part["pareto"]]),
                    ),
                    customdata=part[
                        [
                            "label",
                            "dataset",
                            "model",
                            "regularizer",
                            "epochs",
                            "seed",
                            "float_accuracy",
                            "accuracy_drop",
                            "fc_ratio",
                            "model_ratio",
                            "fc_bits",
                            "file_bytes",
                            "run_id",
                        ]
                    ].values,
                    hovertemplate=(
                        "<b>%{customdata[0]}</b><br>run %{customdata[12]}: %{customdata[1]} %{customdata[2]}, "
                        "%{customdata[3]}, %{customdata[4]} epochs, seed %{customdata[5]}<br>"
                        "accuracy %{y:.2f}% (float %{customdata[6]:.2%}, drop %{customdata[7]:.2%})<br>"
                        "FC ratio %{customdata[8]:.2f}x · model ratio %{customdata[9]:.2f}x<br>"
                        "FC bits %{customdata[10]:,} · file %{customdata[11]:,} bytes<extra></extra>"
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
            line=dict(color="black", width=2, dash="dot"),
            hoverinfo="skip",
        )
    )
    fig.update_xaxes(title_text=axis_title, type="log")
    fig.update_yaxes(title_text="test accuracy (%)")
    return _style(fig, title, height)


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
        fig.add_vline(x=sign * alpha, line=dict(color="black", dash="dash", width=2))
    fig.update_layout(barmode="overlay", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    fig.update_xaxes(title_text="weight value (±α dashed)")
    fig.update_yaxes(title_text="share of weights (%)")
    return _style(fig, None, height)


def toy_pq_figure(
    points: Sequence[Sequence[float]], centroids: Sequence[Sequence[float]], codes: Sequence[int], height: int = 460
) -> go.Figure:
    """2-D points coloured by their centroid, centroids as crosses."""
    fig = go.Figure()
    palette = RUN_COLORS
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            mode="markers",
            name="points (2-D subvectors)",
            marker=dict(color=[palette[c % len(palette)] for c in codes], size=6, opacity=0.6),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[c[0] for c in centroids],
            y=[c[1] for c in centroids],
            mode="markers",
            name=f"centroids (k={len(centroids)})",
            marker=dict(color="black", size=14, symbol="x"),
        )
    )
    fig.update_xaxes(title_text="first coordinate")
    fig.update_yaxes(title_text="second coordinate", scaleanchor="x", scaleratio=1)
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return _style(fig, None, height)


def nice_ratio(value: float) -> str:
    return f"{value:,.2f}x" if math.isfinite(value) else "n/a"
