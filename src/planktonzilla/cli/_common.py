"""Pieces shared by the command modules: the console, the shared options, the one way a user
error ends a command, and the one way every `pz ingest …` command runs a reader into a store.

Exit codes: 0 success; 1 the command ran and found a problem (a failed check, an ingest whose
counts do not balance); 2 a user error (bad arguments, a missing or damaged store or model, a
locked store…) — any `PlanktonzillaError`, or a full / read-only disk, printed on one line
(`--debug` keeps the trace)."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from planktonzilla.exceptions import EXIT_USER_ERROR, PlanktonzillaError

if TYPE_CHECKING:
    from planktonzilla.records import Record, Rejection
    from planktonzilla.store import IngestReport

console = Console(stderr=True)


class PzGroup(TyperGroup):
    """The root command group: a `PlanktonzillaError` from any command is the user's to fix,
    so it ends the command with one line and `EXIT_USER_ERROR`, not a traceback."""

    debug = False

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PlanktonzillaError as exc:
            if PzGroup.debug:
                raise
            console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
            raise typer.Exit(EXIT_USER_ERROR) from None  # typer vendors click: its own Exit
        except OSError as exc:
            if PzGroup.debug or exc.errno not in _DISK_ERRNOS:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            console.print(
                f"[red]error:[/] {escape(exc.strerror or str(exc))}{escape(where)}: free space "
                "(or fix the disk) and rerun; a store is left consistent and the rerun resumes",
                soft_wrap=True,
                highlight=False,
            )
            raise typer.Exit(EXIT_USER_ERROR) from None


#: Disk conditions a user fixes (full disk, quota, read-only mount): one line, not a trace.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def fail(message: str) -> typer.Exit:
    """Print a user error and return the exit to raise: `raise fail("…")`."""
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(EXIT_USER_ERROR)


DEVICE_OPTION = typer.Option("auto", "--device", help="auto (cuda when available) | cpu | cuda")

STORE_OPTION = typer.Option(..., "--store", "-s", help="Store directory (created if missing).")
EXISTING_STORE_OPTION = typer.Option(
    ..., "--store", "-s", exists=True, file_okay=False, help="Store directory."
)
SOURCE_OPTION = typer.Option(..., "--source", help="Source name the images are filed under.")
WORKERS_OPTION = typer.Option(1, "--workers", "-j", min=1, help="Processes that decode and hash.")


#: Options of `pz ingest` itself, shared by its sub-commands (set by its callback).
INGEST_FLAGS = {"retry_rejected": False}


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
        records,
        source=source,
        workers=workers,
        progress=True,
        retry_rejected=INGEST_FLAGS["retry_rejected"],
        **defaults,
    )
    print_ingest_report(report)
    if not report.ok:
        raise typer.Exit(1)
    return report


def print_ingest_report(report: IngestReport) -> None:
    console.print(report.summary())
