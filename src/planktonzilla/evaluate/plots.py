"""PNG plots of evaluation results (matplotlib, headless).

Every function takes plain results data (the blocks of ``results.json``), writes one PNG and
returns its path, or returns ``None`` without writing anything when the data it needs is absent
(so a report simply skips that plot). Series are keyed by a display label, usually the model
name::

    from planktonzilla.evaluate import plots

    metrics = {"resnet50": run["protocols"]["supervised"]}
    plots.reliability_diagram(metrics, "out/plots/reliability.png")
    plots.confusion_by_phylum(
        run["protocols"]["supervised"]["confusion"], run["class_lineages"], "out/plots/cm.png"
    )
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

# Above this many classes the confusion matrix keeps only the phylum group labels: class names
# would overlap into an unreadable band.
MAX_LABELLED_CLASSES = 60
NO_PHYLUM = "(no phylum)"
DPI = 110

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextmanager
def _figure(figsize: tuple[float, float], path: str | Path, text_scale: float = 1.0, **subplots):
    """Yield (fig, axes) in the headless backend, then save to `path` and close the figure.
    `text_scale` enlarges titles and axis labels (not ticks) of very large figures."""
    import matplotlib

    matplotlib.use("Agg")  # reports are rendered on servers and in CI: never open a window
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    style = dict(_STYLE)
    for key in ("font.size", "axes.titlesize", "axes.labelsize", "legend.fontsize"):
        style[key] = _STYLE[key] * text_scale
    with plt.rc_context(style):
        # constrained layout makes room for colour bars and the secondary (phylum) axes
        fig, axes = plt.subplots(figsize=figsize, layout="constrained", **subplots)
        try:
            yield fig, axes
            # No Software tag: keeps the PNG (and the HTML it is embedded in) free of URLs.
            fig.savefig(path, dpi=DPI, metadata={"Software": None})
        finally:
            plt.close(fig)


def _is_number(value) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _pct(value) -> float:
    return 100.0 * value if _is_number(value) else math.nan


def phylum_groups(
    labels: Sequence[str], class_lineages: Sequence[Mapping] | None
) -> tuple[list[int], list[tuple[str, int, int]]]:
    """Order of `labels` by (phylum, class name) and the phylum groups in that order as
    (phylum, start, end) index ranges. Lineages are matched by "name", else by position;
    classes without a phylum form a last group."""
    lineages = list(class_lineages or [])
    by_name = {lin.get("name"): lin for lin in lineages if lin.get("name") is not None}
    phyla = []
    for i, label in enumerate(labels):
        lineage = by_name.get(label) or (lineages[i] if len(lineages) == len(labels) else {})
        phyla.append(lineage.get("phylum") or NO_PHYLUM)
    # Unknown phylum goes last: it is the least informative group.
    order = sorted(range(len(labels)), key=lambda i: (phyla[i] == NO_PHYLUM, phyla[i], labels[i]))
    groups: list[tuple[str, int, int]] = []
    for position, i in enumerate(order):
        if groups and groups[-1][0] == phyla[i]:
            groups[-1] = (phyla[i], groups[-1][1], position + 1)
        else:
            groups.append((phyla[i], position, position + 1))
    return order, groups


def confusion_by_phylum(
    confusion: Mapping,
    class_lineages: Sequence[Mapping] | None,
    path: str | Path,
    *,
    title: str = "Confusion matrix (row-normalised)",
) -> Path | None:
    """Row-normalised confusion matrix with classes grouped by phylum.

    Classes are ordered by (phylum, class name); lines separate the phylum groups, whose names
    label both axes. `class_lineages` are matched to ``confusion["labels"]`` by their "name"
    (falling back to position). Rows of classes without test images stay empty."""
    import numpy as np

    labels = list(confusion.get("labels") or []) if confusion else []
    matrix = confusion.get("matrix") if confusion else None
    if not labels or not matrix:
        return None
    counts = np.asarray(matrix, dtype=float)
    if counts.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix is {counts.shape}, expected {len(labels)} square")

    order, groups = phylum_groups(labels, class_lineages)
    counts = counts[np.ix_(order, order)]
    labels = [labels[i] for i in order]
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)

    n = len(labels)
    side = min(16.0, max(5.0, 2.5 + 0.22 * n))
    scale = max(1.0, side / 9)
    with _figure((side + 1.5, side), path, text_scale=scale) as (fig, ax):
        image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        for _, _, end in groups[:-1]:
            ax.axhline(end - 0.5, color="0.3", linewidth=0.8)
            ax.axvline(end - 0.5, color="0.3", linewidth=0.8)
        if n <= MAX_LABELLED_CLASSES:
            ax.set_xticks(range(n), labels, rotation=90)
            ax.set_yticks(range(n), labels)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        centres = [(start + end - 1) / 2 for _, start, end in groups]
        names = [phylum for phylum, _, _ in groups]
        top = ax.secondary_xaxis("top")
        group_font = {"fontweight": "bold", "fontsize": 8 * scale}
        top.set_xticks(centres, names, rotation=45, ha="left", **group_font)
        right = ax.secondary_yaxis("right")
        right.set_yticks(centres, names, **group_font)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="fraction of the true class")
    return Path(path)


def rank_bars(
    series: Mapping[str, Mapping],
    path: str | Path,
    *,
    metric: str = "macro_f1",
    title: str | None = None,
) -> Path | None:
    """Grouped bars of a per-rank metric ("macro_f1" or "top1"): ranks on x, one bar per
    series. `series` maps a label to a metrics block with a "per_rank" entry (or to the
    per-rank dict itself)."""
    from planktonzilla.data.dataset import RANKS

    per_rank = {}
    for label, block in series.items():
        pr = (block or {}).get("per_rank", block) or {}
        if any(_is_number((pr.get(rank) or {}).get(metric)) for rank in RANKS):
            per_rank[label] = pr
    ranks = [
        rank
        for rank in RANKS
        if any(_is_number((pr.get(rank) or {}).get(metric)) for pr in per_rank.values())
    ]
    if not ranks:
        return None
    labels = list(per_rank)
    width = 0.8 / len(labels)
    name = {"macro_f1": "macro F1", "top1": "top-1 accuracy"}.get(metric, metric)
    with _figure((max(6.0, 1.0 * len(ranks) + 0.15 * len(labels) * len(ranks)), 4.2), path) as (
        _,
        ax,
    ):
        for j, label in enumerate(labels):
            values = [_pct((per_rank[label].get(rank) or {}).get(metric)) for rank in ranks]
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(ranks))]
            ax.bar(xs, values, width=width * 0.95, label=label)
        ax.set_xticks(range(len(ranks)), ranks)
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{name} (%)")
        ax.set_xlabel("taxonomic rank")
        ax.set_title(title or f"{name} per rank")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper right", frameon=False)
    return Path(path)


def f1_vs_frequency(
    series: Mapping[str, Mapping], path: str | Path, *, title: str | None = None
) -> Path | None:
    """Per-class F1 against the number of training images of the class (log x), one colour per
    series. A series without training counts (e.g. zero-shot) is placed at the classes' test
    support instead, and its legend entry says so.
    `series` maps a label to a metrics block with "per_class" rows."""
    points: dict[str, tuple[list[float], list[float]]] = {}
    used_train = used_support = False
    for label, block in series.items():
        rows = (block or {}).get("per_class") or []
        # Per series, not per class: one series mixing both counts would be unreadable.
        by_train = any(_is_number(row.get("train_count")) for row in rows)
        key = "train_count" if by_train else "support"
        xs, ys = [], []
        for row in rows:
            f1, count = row.get("f1"), row.get(key)
            if _is_number(f1) and _is_number(count):
                xs.append(float(count))
                ys.append(100.0 * f1)
        if xs:
            used_train, used_support = used_train or by_train, used_support or not by_train
            points[label if by_train else f"{label} (test images)"] = (xs, ys)
    if not points:
        return None
    if used_train and used_support:
        xlabel = "training images per class (test images where training counts are unknown)"
    elif used_train:
        xlabel = "training images per class"
    else:
        xlabel = "test images per class (training counts unknown)"
    with _figure((6.5, 4.2), path) as (_, ax):
        for label, (xs, ys) in points.items():
            ax.scatter(xs, ys, s=18, alpha=0.7, label=label)
        # symlog: logarithmic above 1 yet still able to show classes with zero training images
        # (zero-shot models).
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
        ax.set_ylim(-2, 102)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("F1 (%)")
        ax.set_title(title or "Per-class F1 vs class frequency")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", frameon=False)
    return Path(path)


def cross_source_heatmap(
    cross_source: Mapping | None,
    path: str | Path,
    *,
    metric: str = "top1",
    title: str | None = None,
    outlined: Iterable[tuple[int, int]] = (),
) -> Path | None:
    """Heatmap of a cross-source matrix (rows = training fold, columns = test source) with the
    value written in each cell; cells that were not evaluated (null) are grey, and the
    `outlined` (row, column) cells (sources held out of training) get a red frame."""
    import numpy as np

    outlined = list(outlined)
    if not cross_source or not cross_source.get(metric):
        return None
    rows, cols = list(cross_source.get("train") or []), list(cross_source.get("test") or [])
    grid = cross_source[metric]
    values = np.full((len(rows), len(cols)), np.nan)
    for i, row in enumerate(grid[: len(rows)]):
        for j, value in enumerate((row or [])[: len(cols)]):
            if _is_number(value):
                values[i, j] = 100.0 * value
    if not rows or not cols or np.isnan(values).all():
        return None
    name = {"macro_f1": "macro F1", "top1": "top-1 accuracy"}.get(metric, metric)
    unit = cross_source.get("unit") or "source"
    label_in = 0.08 * max(len(str(r)) for r in rows)  # room for the row labels
    size = (max(5.0, 2.5 + label_in + 0.9 * len(cols)), max(3.5, 1.8 + 0.6 * len(rows)))
    with _figure(size, path) as (
        fig,
        ax,
    ):
        import matplotlib

        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100)
        for i in range(len(rows)):
            for j in range(len(cols)):
                value = values[i, j]
                if np.isnan(value):
                    ax.text(j, i, "—", ha="center", va="center", color="0.4")
                else:
                    colour = "white" if value < 60 else "black"
                    ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=colour)
        from matplotlib.patches import Rectangle

        for i, j in outlined:
            if i < len(rows) and j < len(cols):
                frame = Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5)
                ax.add_patch(frame)
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(f"test {unit}" + (" (red frame: held out of training)" if outlined else ""))
        ax.set_ylabel("training fold")
        rank = cross_source.get("rank")
        ax.set_title(title or f"Cross-{unit} {name} (%)" + (f", {rank}" if rank else ""))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"{name} (%)")
    return Path(path)


def reliability_diagram(
    series: Mapping[str, Mapping], path: str | Path, *, title: str = "Reliability"
) -> Path | None:
    """Accuracy against confidence per confidence bin, one panel per series: bars as wide as
    the bin, the diagonal of perfect calibration, and the ECE in the legend. `series` maps a
    label to a metrics block with "reliability" bins and "ece"."""
    panels = {
        label: block
        for label, block in series.items()
        if block and any((b.get("count") or 0) > 0 for b in block.get("reliability") or [])
    }
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with _figure((3.6 * ncols, 3.8 * nrows), path, nrows=nrows, ncols=ncols, squeeze=False) as (
        fig,
        axes,
    ):
        for ax in axes.flat[len(panels) :]:
            ax.set_visible(False)
        for ax, (label, block) in zip(axes.flat, panels.items(), strict=False):
            bins = [b for b in block["reliability"] if (b.get("count") or 0) > 0]
            lowers = [b["lower"] for b in bins]
            widths = [b["upper"] - b["lower"] for b in bins]
            accuracy = [b.get("accuracy") or 0.0 for b in bins]
            ece = block.get("ece")
            ece_text = f"ECE {100 * ece:.1f}%" if _is_number(ece) else "ECE —"
            ax.bar(
                lowers,
                accuracy,
                width=widths,
                align="edge",
                edgecolor="0.2",
                linewidth=0.5,
                alpha=0.8,
                label=f"accuracy ({ece_text})",
            )
            ax.plot(
                [0, 1], [0, 1], linestyle="--", color="black", zorder=3, label="perfect calibration"
            )
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ax.set_title(label)
            # framed: stays readable where it overlaps the bars
            ax.legend(loc="upper left", framealpha=0.9)
        fig.suptitle(title)
    return Path(path)


def few_shot_curves(
    series: Mapping[str, Mapping], path: str | Path, *, title: str = "Few-shot top-1 accuracy"
) -> Path | None:
    """Top-1 mean against shots per class k with ± std error bars, one line per (series,
    method). `series` maps a label to a few-shot block ({"k", "methods": {...}})."""
    lines = []
    for label, block in series.items():
        for method, by_k in ((block or {}).get("methods") or {}).items():
            points = sorted(
                (int(k), 100.0 * v["top1_mean"], _pct(v.get("top1_std")))
                for k, v in (by_k or {}).items()
                if v and _is_number(v.get("top1_mean"))
            )
            if points:
                lines.append((f"{label} · {method}", points))
    if not lines:
        return None
    ks = sorted({k for _, points in lines for k, _, _ in points})
    with _figure((6.5, 4.2), path) as (_, ax):
        for name, points in lines:
            xs, ys, errs = zip(*points, strict=True)
            errs = [0.0 if math.isnan(e) else e for e in errs]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name)
        if ks[0] > 0:
            ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_ylim(0, 100)
        ax.set_xlabel("training images per class (k)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    return Path(path)
