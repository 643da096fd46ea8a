"""Figures for ``eenet plot``: data in, :class:`matplotlib.figure.Figure` out.

Four pictures, all drawn with the same style (:data:`STYLE`) and a colour-blind-safe
palette (Okabe & Ito, 2008):

- :func:`tradeoff_figure` — accuracy (%) against realised average cost, one line per
  method, the oracle as a dashed ceiling, the full model as a horizontal reference and
  hollow red crosses where a method overran its budget (from a results document).
- :func:`exits_figure` — stacked bars: share of samples leaving at each exit, per method,
  at one budget (from a results document).
- :func:`scores_figure` — the paper's Figures 6-9: one panel per exit, x = class,
  y = the policy's exit score, colour = right/wrong at that exit, samples that already
  left in grey, the threshold as a horizontal line.
- :func:`separation_figure` — the paper's Figure 3: at exit 1, max-prob (left) and the
  policy's score (right) of right and wrong predictions for a few classes.

Nothing here reads files or knows about the command line; figures are built on
``matplotlib.figure.Figure`` directly (no pyplot, no global state) with an Agg canvas
attached (so ``fig.canvas.get_renderer()`` works), and :func:`save_figure` writes one with
fixed metadata so the bytes are reproducible. Randomness (jitter, subsampling) comes from
a fixed seed.

Text that comes from files or the command line (method names, units, class names,
titles) is drawn as plain text: mathtext and TeX are off (``$`` is just a dollar sign).
Exits are numbered for people, 1..K ("exit 1" is the first exit).

>>> fig = tradeoff_figure([
...     {"method": "maxprob", "budget": 2.0, "accuracy": 0.8, "avg_cost": 2.0, "budget_met": True},
...     {"method": "maxprob", "budget": 3.0, "accuracy": 0.9, "avg_cost": 3.1, "budget_met": False},
... ], unit="ms")
>>> [line.get_label() for line in fig.axes[0].get_lines()]
['maxprob']
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import ScalarFormatter

from eenet_cli.core.methods import METHODS
from eenet_cli.core.policy import SCORERS
from eenet_cli.core.thresholds import ACCEPT_ALL

# --------------------------------------------------------------------------- style

#: Okabe-Ito colours (colour-blind safe).
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
RIGHT_COLOUR = OKABE_ITO["blue"]
WRONG_COLOUR = OKABE_ITO["vermillion"]
OVERRUN_COLOUR = "#D00000"  # red: not to be mistaken for the orange of maxprob or the vermillion of "wrong"
EXITED_COLOUR = "#BBBBBB"
THRESHOLD_COLOUR = "#222222"
REFERENCE_COLOUR = "#777777"
CERTIFIED_COLOUR = "#1B7837"  # green rings: points that carry a certificate

_SPARE_STYLES = [("#555555", m, ls) for ls in ("-", "--", ":") for m in ("p", "<", ">", "d", "8")]

#: rcParams used while building and saving every figure.
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "legend.frameon": False,
    "svg.hashsalt": "eenet",
    "svg.fonttype": "path",
    "pdf.fonttype": 42,
    "path.simplify": True,
    # text from files (method names, units, class names, titles) is plain text, never math
    "text.usetex": False,
    "text.parse_math": False,
    "axes.formatter.useoffset": False,
}

DEFAULT_SIZE = (7.0, 4.5)  # inches; at the default 150 dpi: 1050 x 675 pixels
DEFAULT_DPI = 150
MAX_POINTS = 5000  # per panel of the score figures
MANY_CLASSES = 30  # above this, classes are sorted by full-model accuracy, not labelled one by one
FORMATS = ("png", "svg", "pdf")

ACCEPT_ALL_BELOW = ACCEPT_ALL / 10  # a threshold at or below this stops every sample


def style_context():
    """``with style_context(): ...`` builds or saves a figure in the house style."""
    return matplotlib.rc_context(STYLE)


def score_label(scorer_type: str, exit_number: int | None = None) -> str:
    """Axis label naming a policy's exit score, e.g. ``"entropy score at exit 1"``.

    ``exit_number`` counts from 1. Unknown scorers are named as given; none at all gives
    ``"exit score"``.
    """
    known = SCORERS.get(scorer_type)
    name, note = (known.axis, known.note) if known is not None else (scorer_type, "")
    label = f"{name} score" if name else "exit score"
    if exit_number is not None:
        label += f" at exit {exit_number}"
    return f"{label} ({note})" if note else label


def method_style(method: str, index: int = 0) -> tuple[str, str, str]:
    """(colour, marker, linestyle) for ``method``; unknown methods get spare grey styles."""
    return METHODS[method].style if method in METHODS else _SPARE_STYLES[index % len(_SPARE_STYLES)]


def ordered_methods(methods: Sequence[str]) -> list[str]:
    """Known methods in a fixed order (oracle last), then the others as first seen."""
    seen = list(dict.fromkeys(methods))
    known = [m for m in METHODS if m in seen]
    return [m for m in known if m != "oracle"] + [m for m in seen if m not in METHODS] + (["oracle"] if "oracle" in seen else [])


def save_figure(fig: Figure, target: str | BinaryIO, fmt: str, dpi: float = DEFAULT_DPI) -> None:
    """Write ``fig`` as png/svg/pdf with fixed metadata (same figure, same bytes)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {', '.join(FORMATS)}")
    metadata: dict[str, Any] = {
        "png": {"Software": None},
        "svg": {"Date": None, "Creator": None},
        "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
    }[fmt]
    with style_context():
        _plain_text(fig)
        fig.savefig(target, format=fmt, dpi=dpi, metadata=metadata)


def _new_figure(size: tuple[float, float] = DEFAULT_SIZE) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with, before any file is written
    return fig


def _plain_text(fig: Figure) -> Figure:
    """Draw every text of ``fig`` literally: no mathtext, no TeX (``$`` stays ``$``)."""
    for text in fig.findobj(Text):
        text.set_parse_math(False)
        text.set_usetex(False)
    return fig


def _suptitle(fig: Figure, text: str) -> None:
    """The figure title, each line wrapped to the figure's width (long file names, long --title)."""
    size = FontProperties(size=matplotlib.rcParams["figure.titlesize"]).get_size_in_points()
    width = max(20, int(fig.get_figwidth() * 72.0 / (0.6 * size)))
    lines = [textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False) or line for line in text.split("\n")]
    fig.suptitle("\n".join(lines))


def _plain_numbers(axis) -> None:
    """Plain tick labels on ``axis``: no offset (``1e-5+1.92``) and no ×10^n text."""
    formatter = ScalarFormatter(useOffset=False, useMathText=False)
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def _layout(fig: Figure):
    """Lay ``fig`` out (constrained layout included) and return its renderer."""
    with style_context():
        _plain_text(fig)
        fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def _crowded(boxes: Sequence, pad: float = 2.0) -> bool:
    """Whether any two of the display boxes ``boxes`` come closer than ``pad`` pixels."""
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad:
                return True
    return False


def _tick_label_boxes(ax, renderer) -> list:
    return [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]


def _fmt_budget(value: float, unit: str) -> str:
    return f"{value:.4g} {unit}".strip()


# --------------------------------------------------------------------------- results


def _fields(split: str) -> tuple[str, str, str, str]:
    if split == "val":
        return "val_accuracy", "val_avg_cost", "val_budget_met", "val_exit_fractions"
    return "accuracy", "avg_cost", "budget_met", "exit_fractions"


def full_model_accuracy(records: Sequence[Mapping], costs: Sequence[float] | None, split: str = "test") -> float | None:
    """The full model's accuracy as found in the results, or ``None``.

    Any method at a budget >= c_K sends every sample to the last exit, so the accuracy of a
    non-oracle method at the largest such budget is the full model's. Without costs, a
    record whose samples all left at the last exit serves the same purpose.
    """
    acc_key, _, _, frac_key = _fields(split)
    plain = [r for r in records if r.get("method") != "oracle" and r.get(acc_key) is not None]
    if costs:
        c_k = float(costs[-1])
        at_full = [r for r in plain if float(r["budget"]) >= c_k * (1 - 1e-9)]
        if at_full:
            top = max(float(r["budget"]) for r in at_full)
            rows = [r for r in at_full if float(r["budget"]) == top]
            return float(np.median([float(r[acc_key]) for r in rows]))
    for r in sorted(plain, key=lambda r: -float(r["budget"])):
        fr = r.get(frac_key)
        if isinstance(fr, (list, tuple)) and fr and float(fr[-1]) >= 1.0 - 1e-12:
            return float(r[acc_key])
    return None


def tradeoff_figure(
    records: Sequence[Mapping],
    *,
    unit: str = "",
    costs: Sequence[float] | None = None,
    split: str = "test",
    title: str | None = None,
    budget: float | None = None,
) -> Figure:
    """Accuracy (%) against realised average cost, one line with markers per method.

    ``records`` are evaluation results (docs/spec.md §2.5); ``split='val'`` plots the validation
    figures instead of the test ones. ``costs`` (cumulative, per exit) mark the exits on
    the x axis and locate the full-model accuracy; ``budget`` draws a vertical line.
    """
    acc_key, cost_key, met_key, _ = _fields(split)
    with style_context():
        fig = _new_figure()
        ax = fig.add_subplot()
        methods = ordered_methods([str(r["method"]) for r in records])
        overrun_x: list[float] = []
        overrun_y: list[float] = []
        certified: list[tuple[float, float]] = []
        before: list[tuple[float, float]] = []
        confidence = None
        for i, m in enumerate(methods):
            rows = sorted((r for r in records if r["method"] == m), key=lambda r: float(r["budget"]))
            rows = [r for r in rows if r.get(acc_key) is not None and r.get(cost_key) is not None]
            if not rows:
                continue
            x = np.array([float(r[cost_key]) for r in rows])
            y = 100.0 * np.array([float(r[acc_key]) for r in rows])
            colour, marker, ls = method_style(m, i)
            if m == "oracle":
                ax.plot(x, y, ls, color=colour, marker=marker, lw=1.3, label="oracle (ceiling)", zorder=2)
            else:
                ax.plot(x, y, ls, color=colour, marker=marker, label=m, zorder=3, markeredgecolor="white", markeredgewidth=0.5)
            for r, xi, yi in zip(rows, x, y):
                if r.get(met_key) is False:
                    overrun_x.append(xi)
                    overrun_y.append(yi)
                if r.get("certified_confidence") is not None:
                    certified.append((xi, yi))
                    confidence = float(r["certified_confidence"])
                    if split == "test" and r.get("uncertified_avg_cost") is not None:
                        before.append((float(r["uncertified_avg_cost"]), 100.0 * float(r["uncertified_accuracy"])))
        if certified:
            cx, cy = zip(*certified)
            ax.scatter(cx, cy, s=110, marker="o", facecolors="none", edgecolors=CERTIFIED_COLOUR, linewidths=1.1, zorder=4,
                       label=f"certified: expected cost <= budget, {100 * confidence:.3g}% sure")
        if before:
            bx, by = zip(*before)
            ax.scatter(bx, by, s=14, marker="o", color=REFERENCE_COLOUR, alpha=0.6, zorder=2,
                       label="the same fits before certification")
        if overrun_x:
            ax.scatter(
                overrun_x, overrun_y, s=70, marker="X", facecolors="none", edgecolors=OVERRUN_COLOUR,
                linewidths=1.0, zorder=4, label="budget overrun (cost > budget)",
            )
        full = full_model_accuracy(records, costs, split)
        if full is not None:
            ax.axhline(100.0 * full, color="#555555", ls=":", lw=1.5, zorder=1, label=f"full model ({100 * full:.1f}%)")
        if budget is not None:
            ax.axvline(budget, color=THRESHOLD_COLOUR, ls="-.", lw=1.0, zorder=1, label=f"budget {_fmt_budget(budget, unit)}")
        if costs:
            sec = ax.secondary_xaxis("top")
            sec.set_xticks([float(c) for c in costs], labels=[f"exit {j + 1}" for j in range(len(costs))])
            sec.tick_params(labelsize=7, colors=REFERENCE_COLOUR, length=3)
            sec.spines["top"].set_visible(False)
            # keep every exit's cost inside the view, so the marks mean something
            lo, hi = ax.get_xlim()
            pad = 0.03 * (float(costs[-1]) - float(costs[0]) or 1.0)
            ax.set_xlim(min(lo, float(costs[0]) - pad), max(hi, float(costs[-1]) + pad))
        which = "validation" if split == "val" else "test"
        _plain_numbers(ax.xaxis)
        _plain_numbers(ax.yaxis)
        ax.set_xlabel(f"average cost per sample ({unit}, {which})" if unit else f"average cost per sample ({which})")
        ax.set_ylabel(f"{which} accuracy (%)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        _suptitle(fig, title if title is not None else "Accuracy vs. average cost")
    return _plain_text(fig)


def nearest_budget(records: Sequence[Mapping], target: float | None) -> float:
    """The budget in ``records`` nearest ``target``; without a target, the median budget."""
    budgets = sorted({float(r["budget"]) for r in records})
    if not budgets:
        raise ValueError("no records")
    if target is None:
        return budgets[(len(budgets) - 1) // 2]
    return min(budgets, key=lambda b: (abs(b - target), b))


def exit_colours(k: int) -> list:
    """One colour per exit, light (early) to dark (late), from the colour-blind-safe cividis map."""
    cmap = matplotlib.colormaps["cividis"]
    return [cmap(v) for v in np.linspace(0.92, 0.08, k)] if k > 1 else [cmap(0.3)]


def exits_figure(
    records: Sequence[Mapping],
    budget: float,
    *,
    unit: str = "",
    split: str = "test",
    title: str | None = None,
) -> Figure:
    """Stacked bars of the share of samples per exit, one bar per method, at ``budget``."""
    acc_key, cost_key, met_key, frac_key = _fields(split)
    rows = [r for r in records if math.isclose(float(r["budget"]), budget, rel_tol=1e-9, abs_tol=1e-12) and r.get(frac_key) is not None]
    methods = ordered_methods([str(r["method"]) for r in rows])
    by_method = {str(r["method"]): r for r in rows}
    k = max((len(by_method[m][frac_key]) for m in methods), default=1)
    with style_context():
        fig = _new_figure()
        ax = fig.add_subplot()
        ax.grid(axis="x", visible=False)
        colours = exit_colours(k)
        x = np.arange(len(methods))
        bottoms = np.zeros(len(methods))
        shares = np.zeros((len(methods), k))
        for i, m in enumerate(methods):
            fr = [float(v) for v in by_method[m][frac_key]]
            shares[i, : len(fr)] = fr
        shares *= 100.0
        for j in range(k):
            bars = ax.bar(x, shares[:, j], 0.62, bottom=bottoms, color=colours[j], edgecolor="white", linewidth=0.6, label=f"exit {j + 1}")
            for rect, v, b in zip(bars, shares[:, j], bottoms):
                if v >= 7.0:
                    dark = j >= k / 2
                    ax.text(rect.get_x() + rect.get_width() / 2, b + v / 2, f"{v:.0f}%", ha="center", va="center", fontsize=7, color="white" if dark else "black")
            bottoms += shares[:, j]
        notes = []
        for i, m in enumerate(methods):
            r = by_method[m]
            acc, cost = r.get(acc_key), r.get(cost_key)
            over = r.get(met_key) is False
            lines = [] if acc is None else [f"{100 * float(acc):.1f}%"]
            if cost is not None:
                lines.append(f"{float(cost):#.3g} {unit}".strip())
            if over:
                lines.append("over budget")
            if lines:
                notes.append(ax.annotate(
                    "\n".join(lines), xy=(i, 100.0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=7, linespacing=1.15, color=OVERRUN_COLOUR if over else "black", annotation_clip=False,
                    gid=f"bar-note-{i}",
                ))
        ax.set_xticks(x, labels=methods, rotation=30 if len(methods) > 6 else 0, ha="right" if len(methods) > 6 else "center")
        ax.set_ylim(0, 116)
        ax.set_yticks(np.arange(0, 101, 20))
        which = "validation" if split == "val" else "test"
        ax.set_ylabel(f"share of {which} samples (%)")
        ax.set_xlabel("method (accuracy and average cost above each bar; red: over budget)")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="leaves at")
        _suptitle(fig, title if title is not None else f"Where samples exit at a budget of {_fmt_budget(budget, unit)}")
    _stagger_notes(fig, ax, notes)
    return _plain_text(fig)


def _stagger_notes(fig: Figure, ax, notes: Sequence) -> None:
    """Lay the notes above the bars out in rows so that no two overlap.

    Each note sits over its bar (bars are one data unit apart). When the widest note is
    wider than that, the notes go into as many rows as it takes, neighbours in different
    rows, and the y axis grows so the top row stays inside the axes.
    """
    if len(notes) < 2:
        return
    renderer = _layout(fig)
    widths = [t.get_window_extent(renderer).width for t in notes]
    heights = [t.get_window_extent(renderer).height for t in notes]
    step = abs(ax.transData.transform((1.0, 0.0))[0] - ax.transData.transform((0.0, 0.0))[0])
    rows = max(1, math.ceil((max(widths) + 6.0) / max(step, 1e-9)))
    if rows > 1:
        rows = min(rows, len(notes))
        row_height = max(heights) * 72.0 / fig.dpi + 2.0  # points
        for t in notes:
            t.xyann = (0, 3 + (int(round(t.xy[0])) % rows) * row_height)
    for _ in range(4):  # grow the y axis until the top note is inside (converges quickly)
        renderer = _layout(fig)
        top_px = max(t.get_window_extent(renderer).y1 for t in notes)
        top = ax.transData.inverted().transform((0.0, top_px))[1]
        lo, hi = ax.get_ylim()
        if top <= hi:
            break
        ax.set_ylim(lo, top + 0.02 * (top - lo))


# --------------------------------------------------------------------------- scores


def _is_accept_all(t: float | None) -> bool:
    return t is not None and float(t) <= ACCEPT_ALL_BELOW


def threshold_lines(thresholds: Sequence[float | None]) -> list[tuple[int, float]]:
    """(exit, value) of each threshold drawn as a line: not null, not "stop everyone"."""
    return [(j, float(t)) for j, t in enumerate(thresholds) if t is not None and not _is_accept_all(t)]


def class_order(labels: np.ndarray, correct_last: np.ndarray, num_classes: int) -> np.ndarray:
    """Classes sorted by full-model (last exit) accuracy, hardest first; ties by class id."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels, weights=correct_last.astype(np.float64), minlength=num_classes)
    acc = np.where(counts > 0, hits / np.maximum(counts, 1), np.inf)
    return np.lexsort((np.arange(num_classes), acc))


def _subsample(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _y_jitter(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upward jitter for integer-valued scores (patience), so stacked points show as a band.

    It stays below the next integer, so a point never crosses a threshold it did not meet.
    """
    if scores.size == 0 or not np.all(scores == np.round(scores)) or np.unique(scores).size > 50:
        return np.zeros_like(scores)
    return rng.uniform(0.0, 0.35, size=scores.shape)


def _class_ticks(ax, num_classes: int, class_names: Sequence[str] | None, order: np.ndarray | None) -> None:
    if order is None:
        ticks = np.arange(num_classes)
        names = [str(class_names[c]) for c in ticks] if class_names else [str(c) for c in ticks]
        long = max(len(s) for s in names) > 3
        ax.set_xticks(ticks, labels=names, rotation=60 if long else 0, ha="right" if long else "center",
                      rotation_mode="anchor" if long else "default", fontsize=7 if num_classes > 12 else 8)
        ax.set_xlim(-0.7, num_classes - 0.3)
    else:
        ax.set_xlim(-0.01 * num_classes - 0.5, num_classes - 0.5 + 0.01 * num_classes)


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a right prediction outscores a wrong one (ties count half)."""
    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = (first + (counts + 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def scores_figure(
    scores: np.ndarray,
    labels: np.ndarray,
    correct: np.ndarray,
    exits: np.ndarray,
    thresholds: Sequence[float | None],
    *,
    scorer_type: str = "",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    max_points: int = MAX_POINTS,
    seed: int = 0,
) -> Figure:
    """The paper's Figures 6-9: per exit, each sample's score against its class.

    ``scores`` and ``correct`` are ``[N, K]`` (the policy's score and whether exit k's
    prediction is right), ``exits`` the 0-based exit each sample took, ``thresholds`` the
    policy's. Colours: right/wrong at that exit for samples still running; light grey ×
    for samples that already left. Exit shares in the titles use every sample; with more
    than ``max_points`` samples a seeded subset is drawn.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, k = scores.shape
    num_classes = int(max(labels.max(initial=0) + 1, len(class_names) if class_names else 0, num_classes or 0))
    many = num_classes > MANY_CLASSES
    order = class_order(labels, correct[:, -1], num_classes) if many else None
    xpos_of_class = np.empty(num_classes, dtype=np.float64)
    if order is not None:
        xpos_of_class[order] = np.arange(num_classes)
    else:
        xpos_of_class[:] = np.arange(num_classes)
    rng = np.random.default_rng(seed)
    keep = _subsample(n, max_points, seed)
    m = keep.size
    jitter_w = 0.5 if many else 0.32
    x_all = xpos_of_class[labels[keep]] + rng.uniform(-jitter_w, jitter_w, size=m)
    size = float(np.clip(1200.0 / max(m, 1), 1.5, 14.0)) * (0.6 if many else 1.0)
    alpha = 0.75 if m < 2000 else 0.5
    shares = np.bincount(exits, minlength=k) / max(n, 1)
    nrows = math.ceil(k / 2) if k <= 4 else math.ceil(k / 4)
    ncols = math.ceil(k / nrows)
    width = 7.0 if ncols <= 2 else 9.0
    with style_context():
        fig = _new_figure((width, 2.6 * nrows + 1.0))
        axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
        for j in range(k):
            ax = axes[j // ncols][j % ncols]
            ex = exits[keep]
            y = scores[keep, j] + _y_jitter(scores[keep, j], rng)
            gone = ex < j
            here = ~gone
            ok = correct[keep, j].astype(bool)
            ax.scatter(x_all[gone], y[gone], s=size * 1.1, marker="x", c=EXITED_COLOUR, linewidths=0.6, alpha=0.8, label="already exited", zorder=1, rasterized=m > 2000)
            ax.scatter(x_all[here & ok], y[here & ok], s=size, marker="o", c=RIGHT_COLOUR, linewidths=0, alpha=alpha, label="right at this exit", zorder=2, rasterized=m > 2000)
            ax.scatter(x_all[here & ~ok], y[here & ~ok], s=size, marker="o", c=WRONG_COLOUR, linewidths=0, alpha=alpha, label="wrong at this exit", zorder=3, rasterized=m > 2000)
            t = thresholds[j] if j < len(thresholds) else None
            note = None
            if j == k - 1:
                note = "last exit: all remaining stop"
            elif t is None:
                note = "no threshold: none stop here"
            elif _is_accept_all(t):
                note = "threshold −∞: all remaining stop"
            else:
                ax.axhline(float(t), color=THRESHOLD_COLOUR, lw=1.3, zorder=4, label="threshold", gid=f"threshold-{j}")
                ax.annotate(f"t = {float(t):.3g}", xy=(1.0, float(t)), xycoords=("axes fraction", "data"), xytext=(-2, 3),
                            textcoords="offset points", ha="right", va="bottom", fontsize=7, color=THRESHOLD_COLOUR, zorder=5,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
            if note:
                ax.text(0.99, 0.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color=THRESHOLD_COLOUR,
                        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.8}, zorder=5)
            reach = int((exits >= j).sum())
            stop_here = exits == j
            right_here = int((stop_here & correct[:, j].astype(bool)).sum())
            acc_txt = f"{100 * right_here / stop_here.sum():.0f}% of them right, " if stop_here.any() else ""
            ax.set_title(f"exit {j + 1}: {100 * shares[j]:.1f}% exit here\n{acc_txt}{reach:,} reach it", fontsize=8.5, linespacing=1.3)
            _class_ticks(ax, num_classes, class_names, order)
            ax.grid(axis="x", visible=False)
            _plain_numbers(ax.yaxis)
            if j % ncols == 0:
                ax.set_ylabel(score_label(scorer_type))
            if j // ncols == nrows - 1 or j + ncols >= k:
                ax.set_xlabel("class, sorted by full-model accuracy (hardest first)" if many else "true class")
        for j in range(k, nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        handles = [
            Line2D([], [], ls="", marker="o", color=RIGHT_COLOUR, label="right at this exit"),
            Line2D([], [], ls="", marker="o", color=WRONG_COLOUR, label="wrong at this exit"),
            Line2D([], [], ls="", marker="x", color=EXITED_COLOUR, markeredgewidth=1.2, label="already exited"),
            Line2D([], [], color=THRESHOLD_COLOUR, lw=1.3, label="threshold (stop if score ≥ t)"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=4, handletextpad=0.4, columnspacing=1.4)
        head = title if title is not None else "Exit scores per class at each exit"
        if m < n:
            head += f"\n(a seeded sample of {m:,} of {n:,} samples shown; shares use all)"
        _suptitle(fig, head)
    return _plain_text(fig)


def separation_figure(
    max_prob: np.ndarray,
    policy_scores: np.ndarray,
    labels: np.ndarray,
    correct: np.ndarray,
    classes: Sequence[int],
    *,
    class_acc: np.ndarray | None = None,
    scorer_type: str = "",
    threshold: float | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    max_points: int = MAX_POINTS,
    seed: int = 0,
) -> Figure:
    """The paper's Figure 3: max-prob (left) and the policy's score (right) at exit 1.

    ``max_prob``, ``policy_scores`` and ``correct`` are per sample at exit 1; only samples
    whose label is in ``classes`` are drawn, classes in the order given (left to right).
    Right predictions sit slightly left of each class, wrong ones slightly right. Each
    panel's title gives the AUROC of the score for telling right from wrong.
    """
    classes = [int(c) for c in classes]
    pos = {c: i for i, c in enumerate(classes)}
    sel = np.flatnonzero(np.isin(labels, classes))
    sel = sel[_subsample(sel.size, max_points, seed)]
    rng = np.random.default_rng(seed)
    x = np.array([pos[int(c)] for c in labels[sel]], dtype=np.float64)
    ok = correct[sel].astype(bool)
    x = x + np.where(ok, -0.17, 0.17) + rng.uniform(-0.13, 0.13, size=sel.size)
    size = float(np.clip(1500.0 / max(sel.size, 1), 3.0, 16.0))
    with style_context():
        fig = _new_figure()
        axes = fig.subplots(1, 2)
        panels = [
            (max_prob, score_label("maxprob", 1), "max-prob"),
            (policy_scores, score_label(scorer_type, 1) if scorer_type else "policy's score at exit 1",
             f"policy's score ({scorer_type or 'policy'}{', same as left' if scorer_type == 'maxprob' else ''})"),
        ]
        names = [str(class_names[c]) if class_names else str(c) for c in classes]
        stacked = names if class_acc is None else [f"{nm}\n{100 * class_acc[c]:.0f}%" for nm, c in zip(names, classes)]
        one_line = names if class_acc is None else [f"{nm} ({100 * class_acc[c]:.0f}%)" for nm, c in zip(names, classes)]
        for p, (values, ylabel, name) in enumerate(panels):
            ax = axes[p]
            v = np.asarray(values, dtype=np.float64)[sel]
            ax.scatter(x[ok], v[ok], s=size, c=RIGHT_COLOUR, alpha=0.7, linewidths=0, label="right at exit 1")
            ax.scatter(x[~ok], v[~ok], s=size, c=WRONG_COLOUR, alpha=0.8, linewidths=0, label="wrong at exit 1")
            auc = _auroc(v, ok)
            ax.set_title(f"{name}: AUROC {auc:.3f}" if auc is not None else f"{name}: AUROC n/a", fontsize=8.5)
            ax.set_ylabel(ylabel)
            _plain_numbers(ax.yaxis)
            ax.set_xticks(np.arange(len(classes)), labels=stacked, fontsize=7)
            ax.set_xlim(-0.6, len(classes) - 0.4)
            ax.grid(axis="x", visible=False)
            ax.set_xlabel("class (full-model accuracy)" if class_acc is not None else "class")
            if p == 1 and threshold is not None and not _is_accept_all(threshold):
                ax.axhline(float(threshold), color=THRESHOLD_COLOUR, lw=1.2, ls="--", label="exit-1 threshold", gid="threshold-0")
        handles = [
            Line2D([], [], ls="", marker="o", color=RIGHT_COLOUR, label="right at exit 1"),
            Line2D([], [], ls="", marker="o", color=WRONG_COLOUR, label="wrong at exit 1"),
        ]
        if threshold is not None and not _is_accept_all(threshold):
            handles.append(Line2D([], [], color=THRESHOLD_COLOUR, lw=1.2, ls="--", label="exit-1 threshold"))
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
        _suptitle(fig, title if title is not None else "Separation of right and wrong predictions at exit 1")
    _fit_class_labels(fig, list(axes), one_line)
    return _plain_text(fig)


def _fit_class_labels(fig: Figure, axes: Sequence, one_line: Sequence[str]) -> None:
    """Make the class tick labels of ``axes`` readable without overlapping.

    First as set (horizontal); if any two touch, vertical and on one line each
    (``one_line``); if even those touch, only every n-th class is labelled.
    """
    renderer = _layout(fig)
    if not any(_crowded(_tick_label_boxes(ax, renderer)) for ax in axes):
        return
    for ax in axes:
        ax.set_xticks(ax.get_xticks(), labels=list(one_line), rotation=90, ha="center", va="top", fontsize=7)
    renderer = _layout(fig)
    step = 1
    for ax in axes:
        boxes = _tick_label_boxes(ax, renderer)
        if len(boxes) < 2 or not _crowded(boxes):
            continue
        spacing = abs(boxes[1].x0 - boxes[0].x0) if len(boxes) > 1 else 1.0
        step = max(step, math.ceil((max(b.width for b in boxes) + 3.0) / max(spacing, 1e-9)))
    if step > 1:
        for ax in axes:
            ax.set_xticks(ax.get_xticks(), labels=[t if i % step == 0 else "" for i, t in enumerate(one_line)],
                          rotation=90, ha="center", va="top", fontsize=7)
