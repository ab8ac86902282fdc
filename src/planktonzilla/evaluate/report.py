"""Human reports of evaluation results: merge runs, check they are comparable, write Markdown
and one self-contained HTML page with plots.

An evaluation writes one ``results.json`` per model (format "planktonzilla-evaluation"); a
comparison merges several into ``{"format": "planktonzilla-comparison", "runs": [...]}``.
Runs are comparable only on the same store, taxonomy, split and label rank::

    from planktonzilla.evaluate.report import load_results, write_report

    runs = load_results(["runs/resnet/results.json", "runs/bioclip/results.json"])
    paths = write_report(runs, "reports/resnet-vs-bioclip", title="ResNet vs BioCLIP")
    print(paths["html"])  # one file: CSS inline, plots as data URIs

Rates print as percentages with one decimal; missing values print as "—".
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from planktonzilla.exceptions import PlanktonzillaError

RUN_FORMAT = "planktonzilla-evaluation"
COMPARISON_FORMAT = "planktonzilla-comparison"
FORMAT_VERSION = 1
METRIC_PROTOCOLS = ("supervised", "zero-shot", "linear-probe")
MISSING = "—"

# Main comparison table: protocol -> (column header, metrics key).
_MAIN_COLUMNS = {
    "supervised": [
        ("top-1", "top1"),
        ("top-5", "top5"),
        ("macro F1", "macro_f1"),
        ("weighted F1", "weighted_f1"),
        ("ECE", "ece"),
    ],
    "zero-shot": [("top-1", "top1"), ("macro F1", "macro_f1")],
    "linear-probe": [("top-1", "top1"), ("macro F1", "macro_f1")],
}


class IncompatibleResults(PlanktonzillaError, ValueError):
    """Runs that cannot be compared (different store, taxonomy, split or rank)."""

    def __init__(self, differences: Sequence[str]):
        self.differences = list(differences)
        super().__init__(
            "evaluation runs are not comparable:\n"
            + "\n".join(f"  - {d}" for d in self.differences)
            + "\n(use force=True / --force to report them side by side anyway)"
        )


# ---------------------------------------------------------------------------------------------
# Loading, checking and merging


def load_results(paths: str | Path | Iterable[str | Path]) -> list[dict]:
    """Read results.json files (single runs or merged comparisons) into one flat list of runs.

    Raises ValueError naming the file when it cannot be read, is not JSON, is not a
    planktonzilla results file, or was written by a newer format version."""
    if isinstance(paths, str | Path):
        paths = [paths]
    runs: list[dict] = []
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read results file ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON file ({exc})") from None
        try:
            runs.extend(_flatten(data))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return runs


def check_compatible(runs: Sequence[Mapping], *, force: bool = False) -> list[str]:
    """The human-readable differences that make `runs` incomparable: store manifest hash,
    taxonomy version, split scheme, split info and label rank must all agree.

    Raises IncompatibleResults when there are differences, unless `force` is true; then the
    differences are only returned (a report shows them in a warning banner)."""
    runs = _flatten(runs)
    labels = run_labels(runs)
    checks = [
        ("store manifest hash", lambda r: (r.get("store") or {}).get("manifest_hash")),
        ("taxonomy version", lambda r: r.get("taxonomy_version")),
        ("split scheme", lambda r: (r.get("split") or {}).get("scheme")),
        ("split info", lambda r: (r.get("split") or {}).get("info")),
        ("rank", lambda r: r.get("rank")),
    ]
    differences = []
    for name, value_of in checks:
        values = [value_of(r) for r in runs]
        if len({_canonical(v) for v in values}) <= 1:
            continue
        pairs = list(zip(labels, values, strict=True))
        if name == "split info" and all(isinstance(v, Mapping) for v in values):
            # name only the keys that differ: a seed, not the whole split metadata
            keys = sorted({k for v in values for k in v})
            keys = [k for k in keys if len({_canonical(v.get(k)) for v in values}) > 1]
            shown = "; ".join(
                f"{label}: " + ", ".join(f"{k}={_text(v.get(k))}" for k in keys)
                for label, v in pairs
            )
            differences.append(f"split info differs ({', '.join(keys)}): {shown}")
        elif name == "split info":
            differences.append(
                "split info differs: " + "; ".join(f"{label}: {_text(v)}" for label, v in pairs)
            )
        else:
            show = _short if name == "store manifest hash" else _text
            shown = ", ".join(f"{label} = {show(v)}" for label, v in pairs)
            differences.append(f"{name} differs: {shown}")
    if differences and not force:
        raise IncompatibleResults(differences)
    return differences


def merge_results(runs: Sequence[Mapping] | Mapping, force: bool = False) -> dict:
    """One comparison dict from runs, comparisons or a mix (flattened). Raises
    IncompatibleResults unless the runs are comparable or `force` is true; a forced merge
    records the differences under "differences"."""
    runs = _flatten(runs)
    differences = check_compatible(runs, force=force)
    merged = {"format": COMPARISON_FORMAT, "format_version": FORMAT_VERSION, "runs": runs}
    if differences:
        merged["differences"] = differences
    return merged


def run_labels(runs: Sequence[Mapping]) -> list[str]:
    """Display names of runs: the model name, made unique with the short model hash (or a
    number) when two runs share a name."""
    names = []
    for i, run in enumerate(runs):
        model = run.get("model") or {}
        names.append(str(model.get("name") or model.get("spec") or f"run {i + 1}"))
    labels = list(names)
    for i, run in enumerate(runs):
        if names.count(names[i]) > 1:
            digest = (run.get("model") or {}).get("hash")
            labels[i] = f"{names[i]} ({_short(digest, 8)})" if digest else names[i]
    named = list(labels)
    for i, label in enumerate(named):
        if named.count(label) > 1:
            labels[i] = f"{label} #{named[: i + 1].count(label)}"
    return labels


def _flatten(data) -> list[dict]:
    """Runs out of a run, a comparison, or a list of either; validates the format keys."""
    if isinstance(data, Mapping):
        kind = data.get("format")
        if kind not in (RUN_FORMAT, COMPARISON_FORMAT):
            raise ValueError(
                f"not a planktonzilla results file (format is {kind!r}, expected "
                f"{RUN_FORMAT!r} or {COMPARISON_FORMAT!r})"
            )
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"{kind} without an integer format_version")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{kind} format_version {version} is newer than this planktonzilla reads "
                f"({FORMAT_VERSION}); upgrade planktonzilla"
            )
        if kind == RUN_FORMAT:
            return [dict(data)]
        if not isinstance(data.get("runs"), list):
            raise ValueError(f"{kind} without a 'runs' list")
        data = data["runs"]
    if isinstance(data, list | tuple):
        return [run for item in data for run in _flatten(item)]
    raise ValueError(f"expected evaluation results (a JSON object), got {type(data).__name__}")


# ---------------------------------------------------------------------------------------------
# Formatting


def _is_number(value) -> bool:
    # numbers.Real also admits numpy scalars left in an in-memory run
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _json_default(value):
    """numpy scalars and arrays (in-memory runs) as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _pct(value) -> str:
    return f"{100 * value:.1f}" if _is_number(value) else MISSING


def _pm(mean, std) -> str:
    if not _is_number(mean):
        return MISSING
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if _is_number(std) else _pct(mean)


def _int(value) -> str:
    return f"{int(value):,}" if _is_number(value) else MISSING


def _short(digest, n: int = 12) -> str:
    return str(digest)[:n] if digest else MISSING


def _text(value) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return MISSING
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


# ---------------------------------------------------------------------------------------------
# A small document model rendered twice: Markdown and self-contained HTML.


@dataclass
class _Table:
    columns: list[str]
    rows: list[list[str]]
    groups: list[tuple[str, int]] | None = None  # (group header, number of columns)
    caption: str | None = None
    numeric_from: int = 1  # columns from this index on are right-aligned


@dataclass
class _Image:
    path: Path
    alt: str


@dataclass
class _Section:
    heading: str
    blocks: list = field(default_factory=list)


@dataclass
class _Document:
    title: str
    subtitle: str
    warnings: list[str]
    sections: list[_Section]


def _render_markdown(doc: _Document, base: Path) -> str:
    lines = [f"# {doc.title}", "", doc.subtitle, ""]
    if doc.warnings:
        lines += ["> **Warning: these runs are not strictly comparable.**", ">"]
        lines += [f"> - {_md(w)}" for w in doc.warnings]
        lines.append("")
    for section in doc.sections:
        lines += [f"## {section.heading}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, _Image):
                lines += [f"![{_md(block.alt)}]({block.path.relative_to(base).as_posix()})", ""]
            else:
                if block.caption:
                    lines += [f"*{_md(block.caption)}*", ""]
                columns = block.columns
                if block.groups:
                    # Markdown has no column groups: prefix each header with its group.
                    columns = list(columns)
                    start = len(columns) - sum(n for _, n in block.groups)
                    for name, n in block.groups:
                        for j in range(start, start + n):
                            columns[j] = f"{name} · {columns[j]}" if name else columns[j]
                        start += n
                align = ["---:" if j >= block.numeric_from else "---" for j in range(len(columns))]
                lines.append("| " + " | ".join(_md(c) for c in columns) + " |")
                lines.append("| " + " | ".join(align) + " |")
                lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows]
                lines.append("")
    return "\n".join(lines)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#1d2733;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #d5dbe2;padding-bottom:.2em}
.subtitle{color:#5b6775;margin-top:0}
.warning{background:#fff4e0;border:2px solid #e39b1b;border-radius:6px;padding:.6em 1em;
margin:1em 0}.warning strong{color:#8a4b00}
.scroll{overflow-x:auto;margin:.6em 0 1.2em}
table{border-collapse:collapse;font-size:.88em}
th,td{border:1px solid #d5dbe2;padding:.25em .6em;white-space:nowrap}
th{background:#eef2f6}tr:nth-child(even) td{background:#f8fafc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;color:#5b6775;font-style:italic;padding-bottom:.3em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #e3e8ee}
figcaption{color:#5b6775;font-size:.85em}
"""


def _render_html(doc: _Document) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(doc.title)}</h1>",
        f'<p class="subtitle">{e(doc.subtitle)}</p>',
    ]
    if doc.warnings:
        out.append(
            '<div class="warning" role="alert"><strong>Warning: these runs are not strictly '
            "comparable.</strong><ul>"
            + "".join(f"<li>{e(w)}</li>" for w in doc.warnings)
            + "</ul></div>"
        )
    for section in doc.sections:
        out.append(f"<h2>{e(section.heading)}</h2>")
        for block in section.blocks:
            if isinstance(block, str):
                out.append(f"<p>{e(block)}</p>")
            elif isinstance(block, _Image):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{e(block.alt)}">'
                    f"<figcaption>{e(block.alt)}</figcaption></figure>"
                )
            else:
                out.append(_html_table(block))
    out.append("</body></html>")
    return "\n".join(out)


def _html_table(table: _Table) -> str:
    e = html.escape

    def cls(j: int) -> str:
        return ' class="num"' if j >= table.numeric_from else ""

    parts = ['<div class="scroll"><table>']
    if table.caption:
        parts.append(f"<caption>{e(table.caption)}</caption>")
    parts.append("<thead>")
    if table.groups:
        lead = len(table.columns) - sum(n for _, n in table.groups)
        cells = [f'<th rowspan="2">{e(c)}</th>' for c in table.columns[:lead]]
        cells += [f'<th colspan="{n}">{e(name)}</th>' for name, n in table.groups]
        parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(
            "<tr>"
            + "".join(f"<th{cls(j)}>{e(c)}</th>" for j, c in enumerate(table.columns) if j >= lead)
            + "</tr>"
        )
    else:
        parts.append(
            "<tr>"
            + "".join(f"<th{cls(j)}>{e(c)}</th>" for j, c in enumerate(table.columns))
            + "</tr>"
        )
    parts.append("</thead><tbody>")
    for row in table.rows:
        parts.append(
            "<tr>" + "".join(f"<td{cls(j)}>{e(c)}</td>" for j, c in enumerate(row)) + "</tr>"
        )
    parts.append("</tbody></table></div>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Report content


@dataclass
class _Series:
    """One metrics block of one run: (model, protocol)."""

    label: str
    run: Mapping
    protocol: str
    metrics: Mapping


def _metric_series(runs: Sequence[Mapping], labels: Sequence[str]) -> list[_Series]:
    series = [
        _Series(label, run, protocol, (run.get("protocols") or {})[protocol])
        for run, label in zip(runs, labels, strict=True)
        for protocol in METRIC_PROTOCOLS
        if (run.get("protocols") or {}).get(protocol)
    ]
    # Name the protocol only when more than one is present: "resnet" rather than
    # "resnet · supervised" in a comparison of supervised models.
    if len({s.protocol for s in series}) > 1:
        for s in series:
            s.label = f"{s.label} · {s.protocol}"
    return series


def _protocol(run: Mapping, name: str):
    return (run.get("protocols") or {}).get(name)


def held_out_cells(cross_source: Mapping | None) -> set[tuple[int, int]]:
    """(row, column) cells of a cross-source matrix whose test source was NOT among the row's
    training sources: the out-of-distribution scores (the other cells are in-distribution
    references). The training sources come from the row's fold ("train_units" or
    "train_sources"), else from a row label "all but X", else the row label itself."""
    if not cross_source:
        return set()
    rows, cols = cross_source.get("train") or [], cross_source.get("test") or []
    folds = cross_source.get("folds") or []
    cells = set()
    for i, row in enumerate(rows):
        fold = folds[i] if i < len(folds) and isinstance(folds[i], Mapping) else {}
        training = fold.get("train_units", fold.get("train_sources"))
        if training is None and isinstance(row, str) and row.startswith("all but "):
            training = [c for c in cols if c != row.removeprefix("all but ")]
        if training is None:
            training = [row]
        cells.update((i, j) for j, col in enumerate(cols) if col not in training)
    return cells


def _held_out_mean(cross_source: Mapping | None):
    """Mean top-1 over the held-out cells (sources unseen in training)."""
    grid = (cross_source or {}).get("top1") or []
    values = [
        grid[i][j]
        for i, j in held_out_cells(cross_source)
        if i < len(grid) and j < len(grid[i] or []) and _is_number(grid[i][j])
    ]
    return sum(values) / len(values) if values else None


def _few_shot_keys(runs: Sequence[Mapping]) -> list[tuple[str, str]]:
    """(method, k) pairs present in any run, methods in first-seen order and k ascending."""
    methods: dict[str, set[int]] = {}
    for run in runs:
        for method, by_k in ((_protocol(run, "few-shot") or {}).get("methods") or {}).items():
            methods.setdefault(method, set()).update(int(k) for k in (by_k or {}))
    return [(m, str(k)) for m, ks in methods.items() for k in sorted(ks)]


def _shared(runs: Sequence[Mapping], labels: Sequence[str], value_of, show=_text) -> str:
    values = [value_of(r) for r in runs]
    if len({_canonical(v) for v in values}) <= 1:
        return show(values[0]) if values else MISSING
    return "; ".join(f"{label}: {show(v)}" for label, v in zip(labels, values, strict=True))


def _provenance(runs: Sequence[Mapping], labels: Sequence[str]) -> _Section:
    def split(run: Mapping) -> Mapping:
        return run.get("split") or {}

    rows = [
        [
            "store manifest hash",
            _shared(runs, labels, lambda r: (r.get("store") or {}).get("manifest_hash"), _short),
        ],
        ["store", _shared(runs, labels, lambda r: (r.get("store") or {}).get("path"))],
        ["taxonomy version", _shared(runs, labels, lambda r: r.get("taxonomy_version"))],
        ["split scheme", _shared(runs, labels, lambda r: split(r).get("scheme"))],
        ["split info", _shared(runs, labels, lambda r: split(r).get("info"))],
        ["label rank", _shared(runs, labels, lambda r: r.get("rank"))],
        ["classes", _shared(runs, labels, lambda r: len(r.get("classes") or []) or None)],
        ["filters", _shared(runs, labels, lambda r: r.get("filters"))],
    ]
    models = [
        [
            label,
            _text((run.get("model") or {}).get("kind")),
            _text((run.get("model") or {}).get("spec")),
            _short((run.get("model") or {}).get("hash")),
            ", ".join(_protocols_of(run)) or MISSING,
            _text(run.get("seeds")),
            _text(run.get("code_version")),
            _text(run.get("created")),
        ]
        for run, label in zip(runs, labels, strict=True)
    ]
    return _Section(
        "Provenance",
        [
            _Table(["", "value"], rows, numeric_from=99),
            _Table(
                ["model", "kind", "spec", "hash", "protocols", "seeds", "code", "evaluated"],
                models,
                numeric_from=99,
            ),
        ],
    )


def _protocols_of(run: Mapping) -> list[str]:
    return [name for name, block in (run.get("protocols") or {}).items() if block]


def _main_table(runs: Sequence[Mapping], labels: Sequence[str]) -> _Section:
    columns, groups, cells = ["model"], [], [[label] for label in labels]
    for protocol, spec in _MAIN_COLUMNS.items():
        if not any(_protocol(r, protocol) for r in runs):
            continue
        groups.append((protocol, len(spec)))
        columns += [name for name, _ in spec]
        for row, run in zip(cells, runs, strict=True):
            block = _protocol(run, protocol) or {}
            row += [_pct(block.get(key)) for _, key in spec]
    few_shot = _few_shot_keys(runs)
    if few_shot:
        groups.append(("few-shot top-1 (mean ± std)", len(few_shot)))
        columns += [f"{method} k={k}" for method, k in few_shot]
        for row, run in zip(cells, runs, strict=True):
            methods = (_protocol(run, "few-shot") or {}).get("methods") or {}
            for method, k in few_shot:
                entry = (methods.get(method) or {}).get(k) or {}
                row.append(_pm(entry.get("top1_mean"), entry.get("top1_std")))
    if any(_protocol(r, "cross-source") for r in runs):
        groups.append(("cross-source", 1))
        columns.append("held-out top-1 (mean)")
        for row, run in zip(cells, runs, strict=True):
            row.append(_pct(_held_out_mean(_protocol(run, "cross-source"))))
    blocks: list = []
    if groups:
        blocks.append(
            _Table(
                columns,
                cells,
                groups,
                caption="Rates in percent (ECE in percentage points); — = not evaluated. "
                "Cross-source: mean over sources held out of training.",
            )
        )
    else:
        blocks.append("No protocol results in these runs.")
    return _Section("Comparison", blocks)


def _per_rank(series: Sequence[_Series], plots: Path, images: dict) -> _Section | None:
    from planktonzilla.data.dataset import RANKS

    from . import plots as plot

    with_ranks = [s for s in series if s.metrics.get("per_rank")]
    if not with_ranks:
        return None
    rows = []
    for rank in RANKS:
        entries = [(s.metrics["per_rank"].get(rank) or {}) for s in with_ranks]
        if not any(e.get("n") or _is_number(e.get("top1")) for e in entries):
            continue
        row = [rank]
        for entry in entries:
            row += [_pct(entry.get("top1")), _pct(entry.get("macro_f1"))]
        rows.append(row)
    columns = ["rank"] + ["top-1", "macro F1"] * len(with_ranks)
    groups = [(s.label, 2) for s in with_ranks]
    blocks: list = [
        _Table(
            columns,
            rows,
            groups,
            caption="Predictions truncated to each rank; only test images labelled at that "
            "rank count.",
        )
    ]
    png = plot.rank_bars(
        {s.label: s.metrics for s in with_ranks}, _png(plots, "per-rank-f1", images)
    )
    if png:
        blocks.append(_Image(png, "Macro F1 per taxonomic rank"))
    return _Section("Per taxonomic rank", blocks)


def _severity(series: Sequence[_Series]) -> _Section | None:
    with_severity = [s for s in series if s.metrics.get("severity")]
    if not with_severity:
        return None
    histograms = [
        {int(k): v for k, v in (s.metrics["severity"].get("histogram") or {}).items()}
        for s in with_severity
    ]
    depths = sorted({d for h in histograms for d in h})
    rows = []
    for s, histogram in zip(with_severity, histograms, strict=True):
        severity = s.metrics["severity"]
        mean = severity.get("mean_lca_depth_errors")
        rows.append(
            [
                s.label,
                _int(severity.get("errors")),
                f"{mean:.2f}" if _is_number(mean) else MISSING,
                *[_int(histogram.get(d, 0)) for d in depths],
            ]
        )
    return _Section(
        "Mistake severity",
        [
            "Depth of the lowest common ancestor of the true and predicted taxa, over errors "
            "only: 0 = different kingdom, 1 = same kingdom, 2 = same phylum, and so on. "
            "Deeper mistakes are milder.",
            _Table(
                ["model", "errors", "mean LCA depth", *[str(d) for d in depths]],
                rows,
                [("errors by LCA depth", len(depths))] if depths else None,
            ),
        ],
    )


def _calibration(series: Sequence[_Series], plots: Path, images: dict) -> _Section | None:
    from . import plots as plot

    if not series:
        return None
    rows = [
        [
            s.label,
            _int(s.metrics.get("n")),
            _pct(s.metrics.get("ece")),
            _pct((s.metrics.get("coverage") or {}).get("aurc")),
        ]
        for s in series
    ]
    blocks: list = [
        _Table(
            ["model", "test images", "ECE", "AURC"],
            rows,
            caption="ECE: expected calibration error; AURC: area under the risk-coverage "
            "curve (lower is better). Both in percent.",
        )
    ]
    png = plot.reliability_diagram(
        {s.label: s.metrics for s in series}, _png(plots, "reliability", images)
    )
    if png:
        blocks.append(_Image(png, "Reliability diagram: accuracy against confidence"))
    return _Section("Calibration", blocks)


def _per_class(series: Sequence[_Series], plots: Path, images: dict) -> _Section | None:
    from . import plots as plot

    with_classes = [s for s in series if s.metrics.get("per_class")]
    if not with_classes:
        return None
    classes: dict[str, dict] = {}  # class -> {"support", "train_count"}, first-seen order
    by_series = []
    for s in with_classes:
        rows = {row.get("class"): row for row in s.metrics["per_class"]}
        by_series.append(rows)
        for name, row in rows.items():
            known = classes.setdefault(name, {"support": None, "train_count": None})
            for key in known:
                if known[key] is None:
                    known[key] = row.get(key)
    table_rows = []
    for name, counts in classes.items():
        row = [str(name), _int(counts["support"]), _int(counts["train_count"])]
        for rows in by_series:
            entry = rows.get(name) or {}
            row += [_pct(entry.get("precision")), _pct(entry.get("recall")), _pct(entry.get("f1"))]
        table_rows.append(row)
    blocks: list = []
    png = plot.f1_vs_frequency(
        {s.label: s.metrics for s in with_classes}, _png(plots, "f1-vs-frequency", images)
    )
    if png:
        blocks.append(_Image(png, "Per-class F1 against class frequency"))
    blocks.append(
        _Table(
            ["class", "support", "train count"] + ["P", "R", "F1"] * len(with_classes),
            table_rows,
            [(s.label, 3) for s in with_classes],
            caption="Support = test images; precision, recall and F1 in percent.",
        )
    )
    return _Section("Per class", blocks)


def _confusions(series: Sequence[_Series], plots: Path, images: dict) -> _Section | None:
    from . import plots as plot

    blocks: list = []
    for s in series:
        png = plot.confusion_by_phylum(
            s.metrics.get("confusion") or {},
            s.run.get("class_lineages"),
            _png(plots, f"confusion-{s.label}", images),
            title=f"Confusion matrix, {s.label} (row-normalised)",
        )
        if png:
            blocks.append(_Image(png, f"Confusion matrix of {s.label}, grouped by phylum"))
    return _Section("Confusion matrices", blocks) if blocks else None


def _few_shot(runs: Sequence[Mapping], labels: Sequence[str], plots, images) -> _Section | None:
    from . import plots as plot

    keys = _few_shot_keys(runs)
    if not keys:
        return None
    ks = sorted({int(k) for _, k in keys})
    rows = []
    for run, label in zip(runs, labels, strict=True):
        for method, by_k in ((_protocol(run, "few-shot") or {}).get("methods") or {}).items():
            row = [label, method]
            for k in ks:
                entry = (by_k or {}).get(str(k)) or {}
                row += [
                    _pm(entry.get("top1_mean"), entry.get("top1_std")),
                    _pm(entry.get("macro_f1_mean"), entry.get("macro_f1_std")),
                ]
            rows.append(row)
    blocks: list = [
        _Table(
            ["model", "method"] + ["top-1", "macro F1"] * len(ks),
            rows,
            [(f"k = {k}", 2) for k in ks],
            caption="Mean ± standard deviation over seeds, in percent; k = training images "
            "per class.",
            numeric_from=2,
        )
    ]
    png = plot.few_shot_curves(
        {label: _protocol(run, "few-shot") for run, label in zip(runs, labels, strict=True)},
        _png(plots, "few-shot", images),
    )
    if png:
        blocks.append(_Image(png, "Few-shot top-1 accuracy against k"))
    return _Section("Few-shot", blocks)


def _cross_source(runs: Sequence[Mapping], labels: Sequence[str], plots, images) -> _Section | None:
    from . import plots as plot

    blocks: list = []
    for run, label in zip(runs, labels, strict=True):
        cross = _protocol(run, "cross-source")
        if not cross:
            continue
        unit = cross.get("unit") or "source"
        rows, cols = list(cross.get("train") or []), list(cross.get("test") or [])
        held_out = held_out_cells(cross)
        blocks.append(
            f"{label}: one model per fold, each trained without one {unit}; labels at rank "
            f"{cross.get('rank') or MISSING}. † marks a test {unit} held out of that fold's "
            f"training (out of distribution); the other cells are in-distribution references."
        )
        for key, name in (("top1", "top-1"), ("macro_f1", "macro F1")):
            grid = cross.get(key) or []
            table_rows = []
            for i, row_label in enumerate(rows):
                values = (grid[i] if i < len(grid) else None) or []
                cells = [str(row_label)]
                for j in range(len(cols)):
                    text = _pct(values[j]) if j < len(values) else MISSING
                    cells.append(f"{text} †" if (i, j) in held_out and text != MISSING else text)
                table_rows.append(cells)
            blocks.append(
                _Table(
                    ["training fold \\ test", *map(str, cols)],
                    table_rows,
                    caption=f"{label}: {name} (%) per training fold (rows) and test {unit}",
                )
            )
        folds = cross.get("folds") or []
        if folds:
            blocks.append(
                _Table(
                    [
                        "held out",
                        "training " + unit + "s",
                        "train images",
                        "test images",
                        "classes",
                        "top-1",
                        "macro F1",
                    ],
                    [
                        [
                            _text(f.get("held_out")),
                            _text(f.get("train_units") or f.get("train_sources")),
                            _int(f.get("n_train")),
                            _int(f.get("n_test")),
                            _int(f.get("classes")),
                            _pct(f.get("top1")),
                            _pct(f.get("macro_f1")),
                        ]
                        for f in folds
                    ],
                    caption=f"{label}: folds",
                    numeric_from=2,
                )
            )
        png = plot.cross_source_heatmap(
            cross,
            _png(plots, f"cross-source-{label}", images),
            title=f"{label}: cross-{unit} top-1 (%)",
            outlined=held_out,
        )
        if png:
            blocks.append(_Image(png, f"Cross-{unit} top-1 accuracy of {label}"))
    return _Section("Cross-source generalisation", blocks) if blocks else None


def _png(plots: Path, name: str, taken: dict) -> Path:
    """A unique PNG path under `plots` for a plot named `name`."""
    slug = _slug(name)
    n = taken.get(slug, 0)
    taken[slug] = n + 1
    return plots / (f"{slug}.png" if n == 0 else f"{slug}-{n + 1}.png")


def _default_title(labels: Sequence[str]) -> str:
    if len(labels) == 1:
        return f"Evaluation of {labels[0]}"
    if len(labels) <= 4:
        return "Comparison of " + ", ".join(labels)
    return f"Comparison of {len(labels)} models"


def write_report(
    results: Mapping | Sequence[Mapping],
    out_dir: str | Path,
    *,
    title: str | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Write report.md, report.html (self-contained), plots/*.png and results.json to
    `out_dir`. `results` is a run, a comparison, or a list of either; results.json holds the
    merged comparison, or the run itself when there is only one.

    Raises IncompatibleResults for incomparable runs unless `force` is true, in which case the
    report opens with a warning banner listing the differences. Returns the paths written:
    "markdown", "html", "results", and one entry per plot keyed "plots/<file>"."""
    from planktonzilla._version import __version__

    merged = merge_results(results, force=force)
    runs = merged["runs"]
    if not runs:
        raise ValueError("no evaluation runs to report")
    labels = run_labels(runs)
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)

    series = _metric_series(runs, labels)
    images: dict[str, int] = {}
    sections = [
        _provenance(runs, labels),
        _main_table(runs, labels),
        _per_rank(series, plots, images),
        _severity(series),
        _calibration(series, plots, images),
        _few_shot(runs, labels, plots, images),
        _cross_source(runs, labels, plots, images),
        _per_class(series, plots, images),
        _confusions(series, plots, images),
    ]
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    doc = _Document(
        title=title or _default_title(labels),
        subtitle=f"{len(runs)} evaluation run(s); report generated {now} by planktonzilla "
        f"{__version__}.",
        warnings=merged.get("differences") or [],
        sections=[s for s in sections if s],
    )

    paths = {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "results": out / "results.json",
    }
    paths["markdown"].write_text(_render_markdown(doc, out), encoding="utf-8")
    paths["html"].write_text(_render_html(doc), encoding="utf-8")
    # One run stays a run file: evaluate() writes its results.json into the same folder.
    saved = runs[0] if len(runs) == 1 else merged
    paths["results"].write_text(
        json.dumps(saved, indent=1, default=_json_default), encoding="utf-8"
    )
    for section in doc.sections:
        for block in section.blocks:
            if isinstance(block, _Image):
                paths[f"plots/{block.path.name}"] = block.path
    return paths
