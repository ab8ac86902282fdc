"""`pz taxonomy …`: resolve labels, map a label list, check the shipped mapping, draw the
label flow, review what a store's own sources left unresolved or uncertain, rebuild the broad
name index."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from planktonzilla.cli._common import EXISTING_STORE_OPTION

app = typer.Typer(
    help="Harmonize raw labels onto one taxonomy (resolve, map, check, flow, review, refresh,"
    " build-index).",
    no_args_is_help=True,
)

BACKBONE_OPTION = typer.Option(
    None, "--backbone", help="Backbone directory (default: the packaged one)."
)


def _backbone(path: Path | None):
    from planktonzilla.taxonomy.backbone import Backbone

    try:
        return Backbone.load(path)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _worms(online: bool, cache: Path | None):
    if not online:
        return None
    from planktonzilla.taxonomy.worms import WormsClient

    return WormsClient(cache_path=cache)


@app.command()
def resolve(
    label: list[str] = typer.Argument(..., help="Raw label(s) to resolve."),
    source: str = typer.Option("", "--source", "-S", help="Source the label comes from."),
    online: bool = typer.Option(False, "--online", help="Ask WoRMS when the backbone fails."),
    worms_cache: Path | None = typer.Option(None, "--worms-cache", help="WoRMS cache file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
    explain: bool = typer.Option(
        False, "--explain", help="Say which segment, rule, index entry or override set each rank."
    ),
    backbone: Path | None = BACKBONE_OPTION,
) -> None:
    """Resolve raw labels and print their lineage, flags and captions."""
    import json

    from planktonzilla.taxonomy.captions import bioclip_caption, lineage_caption
    from planktonzilla.taxonomy.mapping import MAPPING_CSV, load_mapping
    from planktonzilla.taxonomy.resolve import Resolver

    resolver = Resolver(_backbone(backbone), _worms(online, worms_cache))
    shipped = load_mapping() if backbone is None and MAPPING_CSV.is_file() and source else {}
    rows, explained = [], []
    for raw, res in zip(label, resolver.resolve_many(label, source), strict=True):
        row = shipped.get((source, raw))
        why = ("shipped mapping row (taxonomy/data/mapping.csv)",) if row else res.explain
        rows.append(row or res.row())
        explained.append(why)
        if explain:
            rows[-1] = dict(rows[-1], explain=list(why))
    if as_json:
        typer.echo(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return
    from planktonzilla.taxonomy.lineage import Lineage

    for row, why in zip(rows, explained, strict=True):
        lin = Lineage.from_dict(row)
        typer.echo(f"{row['raw_label']!r} ({row['source'] or 'any source'})")
        if explain:
            typer.echo("  explain")
            for line in why:
                typer.echo(f"    {line}")
        if row["status"] == "unresolved":
            typer.echo(f"  unresolved: {row['reason']}")
            continue
        if row["status"] == "ambiguous":
            typer.echo(f"  ambiguous: {row['reason']}")
        typer.echo(f"  name       {lin.name} ({lin.rank or '-'})  AphiaID {lin.aphia_id or '-'}")
        typer.echo(f"  lineage    {' > '.join(v for v in lin.ranks() if v) or '-'}")
        typer.echo(
            f"  flags      root_class={lin.root_class} plankton={lin.plankton} "
            f"qualifier={lin.qualifier or '-'}"
        )
        typer.echo(f"  provenance {row['provenance']} (confidence {row['confidence']})")
        if row.get("reason") and row["status"] == "resolved":
            typer.echo(f"  note       {row['reason']}")
        typer.echo(f"  caption    {lineage_caption(lin)}")
        typer.echo(f"  bioclip    {bioclip_caption(lin)}")


@app.command("map")
def map_labels(
    labels: Path = typer.Argument(..., exists=True, dir_okay=False, help="One label a line."),
    source: str = typer.Option("", "--source", "-S", help="Source the labels come from."),
    out: Path | None = typer.Option(None, "--out", "-o", help="CSV file (default: stdout)."),
    backbone: Path | None = BACKBONE_OPTION,
) -> None:
    """Resolve a file of labels (one a line) and write the mapping as CSV."""
    import contextlib
    import csv

    from planktonzilla.taxonomy.mapping import _csv_row
    from planktonzilla.taxonomy.resolve import COLUMNS, Resolver

    resolver = Resolver(_backbone(backbone))
    raw_labels = [
        line.rstrip("\r\n") for line in labels.read_text(encoding="utf-8-sig").splitlines()
    ]
    raw_labels = [x for x in dict.fromkeys(raw_labels) if x.strip()]
    rows = [r.row() for r in resolver.resolve_many(raw_labels, source)]
    unresolved = sum(row["status"] != "resolved" for row in rows)
    with contextlib.ExitStack() as stack:
        fh = sys.stdout
        if out:
            fh = stack.enter_context(open(out, "w", newline="", encoding="utf-8"))
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_csv_row(row) for row in rows)
    typer.echo(f"{len(raw_labels)} labels, {unresolved} unresolved or ambiguous", err=True)


@app.command()
def check(
    mapping: Path | None = typer.Option(None, "--mapping", help="Mapping CSV (default: shipped)."),
    labels: Path | None = typer.Option(
        None, "--labels", help="source_labels.csv: every pair must be in the mapping."
    ),
    backbone: Path | None = BACKBONE_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print warnings too."),
) -> None:
    """Check the mapping: valid rows, contiguous ranks, qualifiers in the vocabulary, one
    lineage per accepted taxon, synonyms merged, agreement with the backbone."""
    from planktonzilla.taxonomy.mapping import check_files, load_mapping

    bb = _backbone(backbone)
    try:
        rows = load_mapping(mapping)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    errors, warnings = check_files(mapping, bb, labels)
    if verbose:
        for w in warnings:
            typer.echo(f"warning: {w}", err=True)
    for e in errors:
        typer.echo(f"error: {e}", err=True)
    resolved = sum(r["status"] == "resolved" for r in rows.values())
    typer.echo(
        f"{len(rows)} rows ({resolved} resolved, {len(rows) - resolved} unresolved): "
        f"{len(errors)} errors, {len(warnings)} warnings"
    )
    if errors:
        raise typer.Exit(1)


@app.command()
def flow(
    out: Path = typer.Option(Path("flow.html"), "--out", "-o", help="HTML file to write."),
    store: Path | None = typer.Option(None, "--store", "-s", help="Weight by image counts."),
    mapping: Path | None = typer.Option(None, "--mapping", help="Mapping CSV (default: shipped)."),
) -> None:
    """Write a self-contained HTML Sankey: raw labels → harmonized ranks, per source."""
    from planktonzilla.taxonomy.flow import flow_html
    from planktonzilla.taxonomy.mapping import load_mapping

    rows = dict(load_mapping(mapping))
    counts = None
    if store is not None:
        own, counts = _store_mapping(store)
        rows.update(own)
    out.write_text(flow_html(rows.values(), counts), encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)


def _store_mapping(store: Path) -> tuple[dict, dict]:
    """The mapping rows of the labels a store holds, and their image counts."""
    from planktonzilla.store import ObjectStore

    s = ObjectStore(store)
    counts = {
        (r["source"], r["raw_label"]): r["n"]
        for r in s.query(
            "select source, raw_label, count(*) n from objects"
            " where raw_label is not null group by all"
        ).to_pylist()
    }
    rows = {
        (r["source"], r["raw_label"]): r
        for r in s.taxonomy().to_pylist()
        if (r["source"], r["raw_label"]) in counts
    }
    return rows, counts


@app.command()
def review(
    store: Path = EXISTING_STORE_OPTION,
    suggestions: int = typer.Option(3, "--suggestions", "-n", help="Suggestions per label."),
    min_confidence: float = typer.Option(
        0.75, "--min-confidence", help="Also list resolved rows below this confidence."
    ),
    backbone: Path | None = BACKBONE_OPTION,
) -> None:
    """List a store's unresolved, ambiguous and low-confidence labels, most images first,
    with suggestions: what to fix first to cover the most images."""
    from rich.console import Console
    from rich.table import Table

    bb = _backbone(backbone)
    rows, counts = _store_mapping(store)
    todo = [
        r
        for r in rows.values()
        if r["status"] != "resolved" or (r["confidence"] or 0) < min_confidence
    ]
    todo.sort(key=lambda r: (-counts[(r["source"], r["raw_label"])], r["source"], r["raw_label"]))
    images = sum(counts[(r["source"], r["raw_label"])] for r in todo)
    table = Table(
        title=f"{len(todo)} labels to review, {images} images ({len(rows)} labels in {store})"
    )
    for col in ("images", "source", "raw_label", "status", "reason", "suggestions"):
        table.add_column(col)
    for r in todo:
        hint = ", ".join(bb.suggest(r["raw_label"], suggestions)) or "-"
        reason = r["reason"] if r["status"] != "resolved" else f"{r['name']} ({r['confidence']})"
        n = counts[(r["source"], r["raw_label"])]
        table.add_row(str(n), r["source"], r["raw_label"], r["status"], reason, hint)
    Console(width=160).print(table)


@app.command()
def refresh(store: Path = EXISTING_STORE_OPTION) -> None:
    """Resolve a store's own labels again with the current backbone and name index (rewrites
    only `taxonomy/<source>.parquet`, never an image shard)."""
    from planktonzilla.store import ObjectStore

    for source in ObjectStore(store).refresh_taxonomy():
        typer.echo(f"refreshed {source}", err=True)


@app.command("build-index")
def build_index_command(
    out: Path = typer.Option(..., "--out", "-o", help="Index file to write (.tsv.gz)."),
) -> None:
    """Rebuild the broad name index from the installed NCBI Taxonomy snapshot (the
    package's `index` extra); use it with PZ_NAME_INDEX=FILE."""
    import json

    from planktonzilla.taxonomy.build_index import IndexBuildError, build_index

    try:
        typer.echo(json.dumps(build_index(out), indent=2))
    except IndexBuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"use it: export PZ_NAME_INDEX={out.resolve()}", err=True)
