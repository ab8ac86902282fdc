"""Pieces shared by the command modules: the console, the `--store` option, and the one way
every `pz ingest …` command runs a reader into a store and prints its summary."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from planktonzilla.records import Record, Rejection
    from planktonzilla.store import IngestReport

console = Console(stderr=True)

STORE_OPTION = typer.Option(..., "--store", "-s", help="Store directory (created if missing).")
SOURCE_OPTION = typer.Option(..., "--source", help="Source name the images are filed under.")
WORKERS_OPTION = typer.Option(1, "--workers", "-j", min=1, help="Processes that decode and hash.")


def run_ingest(
    records: Iterable[Record | Rejection],
    *,
    store: Path,
    source: str,
    workers: int = 1,
    **defaults,
) -> IngestReport:
    """Ingest `records` with a progress bar and print the read = stored + rejected summary;
    exit non-zero if that balance does not hold."""
    from planktonzilla.store import ObjectStore

    report = ObjectStore(store).ingest(
        records, source=source, workers=workers, progress=True, **defaults
    )
    print_ingest_report(report)
    if not report.ok:
        raise typer.Exit(1)
    return report


def print_ingest_report(report: IngestReport) -> None:
    console.print(report.summary())
