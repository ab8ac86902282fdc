"""Plots of an abundance table: a depth profile per taxon where the units are depth bins of
profiles, else a time series per taxon (concentration with its interval; counts where no
volume is known). PNG (matplotlib) or a self-contained HTML page (the PNG inline + the table)."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from planktonzilla.exceptions import InputError
from planktonzilla.fileio import atomic_write

__all__ = ["plot_abundance", "plot_png"]

_TOP_TAXA = 8  # more panels than this stop being readable


def _figure(table, top: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.to_pylist() if r["rank"] != "total"]
    method = rows[0]["method"] if rows else None
    rows = [r for r in rows if r["method"] == method]
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["taxon"]] = totals.get(r["taxon"], 0.0) + r["count"]
    taxa = sorted(totals, key=lambda t: -totals[t])[:top]
    profile = any(r["subsample_id"] and r["depth_min"] is not None for r in rows) and all(
        r["depth_min"] is not None for r in rows
    )
    fig, axes = plt.subplots(1, max(len(taxa), 1), figsize=(3 * max(len(taxa), 1), 4),
                             squeeze=False)  # fmt: skip
    for ax, taxon in zip(axes[0], taxa, strict=False):
        mine = [r for r in rows if r["taxon"] == taxon]
        use_conc = all(r["concentration"] is not None for r in mine)
        value = "concentration" if use_conc else "count"
        label = f"{value} ({mine[0]['unit']}⁻¹)" if use_conc else "count"
        if profile:
            mine.sort(key=lambda r: r["depth_min"])
            depth = [(r["depth_min"] + r["depth_max"]) / 2 for r in mine]
            ax.plot([r[value] for r in mine], depth, ".-")
            if use_conc:
                ax.fill_betweenx(depth, [r["lower"] for r in mine], [r["upper"] for r in mine],
                                 alpha=0.25)  # fmt: skip
            ax.invert_yaxis()
            ax.set_ylabel("depth (m)")
        else:
            mine = [r for r in mine if r["time_utc"] is not None]
            mine.sort(key=lambda r: r["time_utc"])
            times = [r["time_utc"] for r in mine]
            ax.plot(times, [r[value] for r in mine], ".-")
            if use_conc:
                ax.fill_between(times, [r["lower"] for r in mine], [r["upper"] for r in mine],
                                alpha=0.25)  # fmt: skip
            ax.tick_params(axis="x", labelrotation=45)
        ax.set_title(taxon, fontsize=9)
        ax.set_xlabel(label if profile else "time (UTC)")
        if not profile:
            ax.set_ylabel(label)
    fig.tight_layout()
    return fig


def plot_png(table, *, top: int = _TOP_TAXA) -> bytes:
    """The plot of the `top` most abundant taxa, as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = _figure(table, top)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_abundance(table, path: str | os.PathLike, *, top: int = _TOP_TAXA) -> Path:
    """Write the plot of the `top` most abundant taxa to `path` (.png or .html)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".html"):
        raise InputError(f"{path}: plot to .png or .html")
    png = plot_png(table, top=top)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        atomic_write(path, png)
        return path
    columns = ["sample_id", "subsample_id", "time_utc", "depth_min", "depth_max", "taxon",
               "rank", "count", "concentration", "lower", "upper", "unit", "method"]  # fmt: skip
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[c] if r[c] is not None else ''))}</td>"
                         for c in columns) + "</tr>"
        for r in table.to_pylist() if r["count"]
    )  # fmt: skip
    image = base64.b64encode(png).decode()
    page = (
        "<!doctype html><meta charset='utf-8'><title>abundance</title>"
        f"<img alt='abundance plot' src='data:image/png;base64,{image}'>"
        "<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + f"</tr>{body}</table>"
    )
    atomic_write(path, page.encode())
    return path
