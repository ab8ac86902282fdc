"""`pz report`: merge evaluation results into one report.

pz report runs/resnet/results.json runs/bioclip/results.json --out reports/cmp
"""

from __future__ import annotations

from pathlib import Path

import typer

from planktonzilla.cli._common import console, fail
from planktonzilla.exceptions import EXIT_USER_ERROR


def report(
    results: list[Path] = typer.Argument(
        ...,
        metavar="RESULTS.json",
        help="results.json files of evaluation runs or earlier comparisons.",
    ),
    out: Path = typer.Option(..., "--out", "-o", file_okay=False, help="Report directory."),
    title: str | None = typer.Option(None, "--title", help="Report title."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Report runs side by side even when their store, taxonomy, split or rank differ "
        "(the report then opens with a warning).",
    ),
) -> None:
    """Write report.md, a self-contained report.html, plots and the merged results.json
    comparing the given evaluation runs."""
    from rich.markup import escape

    from planktonzilla.evaluate.report import (
        IncompatibleResults,
        load_results,
        run_labels,
        write_report,
    )

    try:
        runs = load_results(results)
        paths = write_report(runs, out, title=title, force=force)
    except IncompatibleResults as exc:
        console.print("[red]cannot compare these runs:[/]", soft_wrap=True)
        for difference in exc.differences:
            console.print(f"  - {escape(difference)}", soft_wrap=True)
        console.print("use --force to report them side by side anyway", soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except ValueError as exc:
        raise fail(f"report failed: {exc}") from None
    plots = sum(1 for key in paths if key.startswith("plots/"))
    console.print(
        f"compared {len(runs)} run(s): {escape(', '.join(run_labels(runs)))}",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"report: {escape(str(paths['html']))}\n"
        f"        {escape(str(paths['markdown']))} ({plots} plot(s) in "
        f"{escape(str(Path(out) / 'plots'))})\n"
        f"merged results: {escape(str(paths['results']))}",
        soft_wrap=True,
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("report")(report)
