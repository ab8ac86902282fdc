"""`pz split`, `pz splits`: train / val / test split tables beside the store's shards."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from planktonzilla.cli._common import EXISTING_STORE_OPTION, console


class Scheme(StrEnum):
    stratified = "stratified"
    grouped = "grouped"
    upstream = "upstream"
    loso = "loso"
    loio = "loio"


def _print_counts(store, names: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from planktonzilla.data.splits import split_counts

    table = Table(title=title, title_justify="left")
    for column in ("split table", "side", "images", "classes", "samples"):
        table.add_column(column, justify="left" if column in ("split table", "side") else "right")
    for row in split_counts(store, names):
        table.add_row(
            row["scheme"],
            row["split"],
            f"{row['images']:,}",
            f"{row['classes']:,}",
            f"{row['samples']:,}",
        )
    Console(width=120).print(table)


def split(
    store: Path = EXISTING_STORE_OPTION,
    scheme: Scheme = typer.Option(..., "--scheme", help="Split scheme."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same split."),
    val: float = typer.Option(0.1, "--val", min=0.0, max=1.0, help="Fraction of images in val."),
    test: float = typer.Option(
        0.1, "--test", min=0.0, max=1.0, help="Fraction in test (not loso / loio)."
    ),
    min_per_class: int = typer.Option(
        5, "--min-per-class", min=0, help="Classes with fewer images go entirely to train."
    ),
) -> None:
    """Make split tables (splits/<name>.parquet): stratified per source and taxon, grouped by
    sample id, the collection's upstream split, or leave-one-source/instrument-out folds."""
    from planktonzilla.data.splits import SplitError, make_split
    from planktonzilla.store import ObjectStore

    s = ObjectStore(store)
    try:
        names = make_split(
            s, scheme.value, seed=seed, val=val, test=test, min_per_class=min_per_class
        )
    except SplitError as exc:
        console.print(f"[red]split failed:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"wrote {len(names)} split table(s) to {s.layout.splits}")
    _print_counts(s, names, f"{scheme.value} (seed {seed})")


def splits(store: Path = EXISTING_STORE_OPTION) -> None:
    """List the store's split tables with images, classes and samples per side."""
    from planktonzilla.data.splits import list_splits
    from planktonzilla.store import ObjectStore

    s = ObjectStore(store)
    names = list_splits(s)
    if not names:
        console.print(f"no split tables in {store}: make one with `pz split --scheme …`")
        return
    _print_counts(s, names, f"Split tables ({len(names)})")


def register(app: typer.Typer) -> None:
    app.command("split")(split)
    app.command("splits")(splits)
