"""Config widgets shared by the pages: the Train page and the Frontier's sweep form build a
TrainConfig the same way (`train_fields_ui`); the Compress page builds its CompressConfig from the
same bound controls (`selectbox`, `select_slider`, `radio`, `number_input`, `toggle`).

A widget bound to the URL (`bind="query-params"`) silently falls back to its default when the
link holds a value it cannot take; `link_notice` checks the raw parameter first and says which
parameter was not used and what was used instead; a number written otherwise than a slider shows
it (k=65536 for 65,536, lam=1e-2) is taken as that number (`_meant`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import streamlit as st

from core.config import DATASETS, MAX_EPOCHS, MODELS, REGULARIZERS, TrainConfig, field_default, field_help, parse_hidden
from core.data import DATASET_INFO
from ui.common import LAM_OPTIONS, fmt_lam, plain

QP: Literal["query-params"] = "query-params"


def _bind(bind: bool) -> Literal["query-params"] | None:
    return QP if bind else None


LR_OPTIONS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
REG_D_OPTIONS = (1, 2, 4, 8, 16)
REG_K_OPTIONS = (2, 4, 16, 64, 256, 1024)
MAX_SEED_UI = 10_000


def _number_text(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def link_notice(key: str, accepts: Callable[[str], bool], used: object) -> bool:
    """If the URL carries `key` with a value the widget cannot take, say so (as plain text), drop it
    from the URL and return False: the widget must then be drawn unbound for this run, since
    Streamlit would parse the value itself (and `epochs=1e400` raises inside Streamlit)."""
    raw = st.query_params.get(key)
    if raw is None or key in st.session_state:
        return True  # no link value, or the widget already holds the user's own choice
    if accepts(raw):
        return True
    st.warning(f"The link's {plain(key)}={plain(raw[:60])} cannot be used here; showing {plain(used)} instead.")
    del st.query_params[key]
    return False


def in_options(options: Sequence[Any]) -> Callable[[str], bool]:
    """Accepts a URL value that equals one of `options` (numbers compared as numbers)."""

    def accepts(raw: str) -> bool:
        if raw in (str(o) for o in options):
            return True
        number = _number_text(raw.replace(",", ""))  # 65,536 as the slider shows it
        return number is not None and any(
            isinstance(o, int | float) and not isinstance(o, bool) and number == o for o in options
        )

    return accepts


def int_in(low: int, high: int) -> Callable[[str], bool]:
    def accepts(raw: str) -> bool:
        text = raw.strip()
        return len(text) <= 12 and text.lstrip("-").isdigit() and low <= int(text) <= high

    return accepts


def selectbox(label: str, options: Sequence[Any], default: Any, key: str, bind: bool, **kwargs: Any) -> Any:
    bind = bind and link_notice(key, in_options(options), default)
    return st.selectbox(label, options, index=list(options).index(default), key=key, bind=_bind(bind), **kwargs)


def _meant(key: str, options: Sequence[Any], format_func: Callable[[Any], str] | None) -> Any:
    """The option a link's value means when it is written otherwise than the option's label.

    Streamlit reads a bound slider's URL value as the option's label (`format_func`'s text: k=65,536)
    and silently takes the widget's default for anything else; the same number written otherwise
    (k=65536, lam=1e-2) is that option, so the caller makes it the default."""
    raw = st.query_params.get(key)
    if raw is None or key in st.session_state:
        return None
    shown = [format_func(option) if format_func else str(option) for option in options]
    if raw in shown:
        return None
    number = _number_text(raw.replace(",", ""))
    for option in options:
        if raw == str(option) or (number is not None and not isinstance(option, bool) and number == option):
            return option
    return None


def select_slider(label: str, options: Sequence[Any], default: Any, key: str, bind: bool, **kwargs: Any) -> Any:
    # Streamlit writes a bound slider's value in the URL as its label (format_func's text: 90%, k=65,536):
    # a link carries either that label or the number
    format_func = kwargs.get("format_func")
    shown = {format_func(option) for option in options} if format_func else set()
    number = in_options(options)
    bind = bind and link_notice(key, lambda raw: raw in shown or number(raw), default)
    meant = _meant(key, options, kwargs.get("format_func")) if bind else None
    if meant is None:
        return st.select_slider(label, options, value=default, key=key, bind=_bind(bind), **kwargs)
    # drawn unbound this once at the meant value (bound, Streamlit would take the default for it), then
    # the URL says it as the slider does: from the next run on the bound slider keeps it, and a copied
    # link holds it
    del st.query_params[key]
    chosen = st.select_slider(label, options, value=meant, key=key, **kwargs)
    format_func = kwargs.get("format_func")
    st.query_params[key] = format_func(chosen) if format_func else str(chosen)
    return chosen


def number_input(label: str, low: int, high: int, default: int, key: str, bind: bool, **kwargs: Any) -> int:
    bind = bind and link_notice(key, int_in(low, high), default)
    return int(st.number_input(label, low, high, default, key=key, bind=_bind(bind), **kwargs))


def default(name: str) -> Any:
    """A training control's default: the TrainConfig field's own (one home for each default). The
    page's two choices of its own are the regularizer (binary, the paper's term, where the config
    says none) and λ = 0.01."""
    return field_default(TrainConfig, name)


def train_config_ui(prefix: str = "", bind: bool = True) -> TrainConfig:
    """The training widgets in four columns; returns the TrainConfig they describe. Raises
    ValueError (with a sentence to show) when the combination is not valid."""
    return TrainConfig(**train_fields_ui(prefix, bind))


def train_fields_ui(prefix: str = "", bind: bool = True, sweep: bool = False) -> dict[str, Any]:
    """The training widgets in four columns; returns their TrainConfig field values, as set (not
    canonicalized: with `sweep=True` lam is left to the caller, which picks several, and the
    regularizer's own settings must survive). ValueError for hidden widths that do not parse."""
    col1, col2, col3, col4 = st.columns(4)
    with col1:
        dataset = selectbox("Dataset", DATASETS, default("dataset"), f"{prefix}dataset", bind)
        model = selectbox(
            "Model", MODELS, default("model"), f"{prefix}model", bind, help=field_help(TrainConfig, "model")
        )
        hidden_text = st.text_input(
            "Hidden widths (mlp)",
            ",".join(str(width) for width in default("hidden")),
            key=f"{prefix}hidden",
            bind=_bind(bind),
            disabled=model != "mlp",
            help="Comma- or space-separated, e.g. 300,100",
        )
    with col2:
        regs = [r for r in REGULARIZERS if r != "none"] if sweep else list(REGULARIZERS)
        reg = selectbox(
            "Regularizer" + (" for λ > 0" if sweep else ""),
            regs,
            "binary",
            f"{prefix}reg",
            bind,
            help="binary: our reading of the paper's term; levels / pq: our generalizations.",
        )
        # without a regularizer there is no λ and no warm-up: their controls are off (their values are
        # kept for when a regularizer is picked again, and TrainConfig ignores them meanwhile)
        off = reg == "none"
        unused = " Not used: the regularizer is none." if off else ""
        lam = 0.0
        if not sweep:
            lam = select_slider(
                "λ (weight of the regularizer)",
                LAM_OPTIONS,
                0.01,
                f"{prefix}lam",
                bind,
                format_func=fmt_lam,
                disabled=off,
                help="Log-spaced; 0 turns the regularizer off." + unused,
            )
        warmup = number_input(
            "Warm-up epochs (λ ramps from 0)",
            0,
            50,
            default("warmup_epochs"),
            f"{prefix}warmup",
            bind,
            disabled=off,
            help=unused or None,
        )
        warmup_start = number_input(
            "Warm-up starts at epoch", 0, 50, default("warmup_start"), f"{prefix}warmup_start", bind, disabled=off,
            help="λ is 0 before this epoch: the network learns first, then is pushed to the term's values." + unused,
        )  # fmt: skip
    with col3:
        epochs = number_input("Epochs", 1, min(100, MAX_EPOCHS), default("epochs"), f"{prefix}epochs", bind)
        lr = select_slider("Learning rate (Adam)", LR_OPTIONS, default("lr"), f"{prefix}lr", bind, format_func=fmt_lam)
        seed = number_input("Seed", 0, MAX_SEED_UI, default("seed"), f"{prefix}seed", bind)
    with col4:
        reg_levels = number_input(
            "levels: number of levels",
            2,
            16,
            default("reg_levels"),
            f"{prefix}reg_levels",
            bind,
            disabled=reg != "levels",
        )
        reg_d = select_slider(
            "pq: subvector size d",
            REG_D_OPTIONS,
            default("reg_subvector_size"),
            f"{prefix}reg_d",
            bind,
            disabled=reg != "pq",
        )
        reg_k = select_slider(
            "pq: centroids k", REG_K_OPTIONS, default("reg_centroids"), f"{prefix}reg_k", bind, disabled=reg != "pq"
        )
        conv = st.checkbox(
            "Regularize the conv layers too",
            value=False,
            key=f"{prefix}reg_conv",
            disabled=model == "mlp",
            help="The paper regularizes the FC layers only; this also pulls every conv weight toward the "
            "term's targets (beyond the paper).",
        )
    st.caption(DATASET_INFO[dataset])
    hidden = parse_hidden(hidden_text) if model == "mlp" else (300, 100)
    return dict(
        dataset=dataset,
        model=model,
        hidden=hidden,
        reg=reg,
        lam=float(lam),
        warmup_epochs=warmup,
        warmup_start=warmup_start,
        reg_levels=reg_levels,
        reg_subvector_size=int(reg_d),
        reg_centroids=int(reg_k),
        epochs=epochs,
        lr=float(lr),
        seed=seed,
        reg_targets="fc+conv" if conv and model != "mlp" else "fc",
    )


# The labels of the Compress page's radios: Streamlit keeps a bound radio's value in the URL as its
# label, so a link to a setting (ui.detail.compress_link) writes these.
TARGET_LABELS = {"fc": "FC only (the paper)", "fc+conv": "FC + conv"}
WEIGHTING_LABELS = {"none": "weight error", "activations": "output error"}
ENTROPY_LABELS = {"none": "bit-packed", "ans": "rANS"}


def fmt_sparsity(sparsity: float) -> str:
    """The sparsity slider's label of a value (and so the URL's): off, 50%, 90%..."""
    return "off" if sparsity == 0 else f"{sparsity:.0%}"


def radio(label: str, options: Sequence[Any], default: Any, key: str, bind: bool, **kwargs: Any) -> Any:
    # Streamlit keeps a bound radio's value in the URL as its label (format_func's text): check that
    format_func = kwargs.get("format_func")
    shown = [format_func(option) for option in options] if format_func else options
    used = format_func(default) if format_func else default
    bind = bind and link_notice(key, in_options(shown), used)
    return st.radio(label, options, index=list(options).index(default), key=key, bind=_bind(bind), **kwargs)


def toggle(label: str, default: bool, key: str, bind: bool, **kwargs: Any) -> bool:
    bind = bind and link_notice(key, lambda raw: raw.lower() in ("true", "false"), default)
    return bool(st.toggle(label, value=default, key=key, bind=_bind(bind), **kwargs))
