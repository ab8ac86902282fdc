"""`pz predict`: classify images, bins, runs and exports into CSV / Parquet / EcoTaxa.

pz predict models/supervised D20240601/ --out day.tsv
pz predict models/clip vignettes/ run.lst --out out.zip --labels Copepoda,Chaetognatha
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from planktonzilla.cli._common import DEVICE_OPTION, fail


class Format(StrEnum):
    csv = "csv"
    parquet = "parquet"
    ecotaxa = "ecotaxa"
    ecotaxa_zip = "ecotaxa-zip"


class Category(StrEnum):
    label = "label"
    confident = "confident"


def predict(
    model: Path = typer.Argument(..., help="Model directory (config.json + model.safetensors)."),
    inputs: list[Path] = typer.Argument(
        None,
        help="Images, image folders, zips of images, IFCB bins, FlowCam runs (.lst), EcoTaxa "
        "exports (TSV or zip) or a planktonzilla store; any mix.",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.csv .parquet .tsv .zip)."),
    fmt: Format = typer.Option(
        None, "--format", "-f", help="Output format (default: from the --out suffix)."
    ),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Labels kept per image."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str = DEVICE_OPTION,
    labels: str = typer.Option(
        None,
        "--labels",
        help="Comma-separated label list to restrict to (classes, or taxa above them; any "
        "taxon for a CLIP-style model).",
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue an existing --out (default) or replace it."
    ),
    category: Category = typer.Option(
        Category.label,
        "--category",
        help="EcoTaxa category: the top-1 label, or the confident taxon (e.g. the genus when "
        "the species is unsure).",
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Stop after N new inputs."),
    where: str = typer.Option(None, "--where", help="SQL condition on store inputs."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Classify every image of INPUT… with MODEL into --out; rerunning with the same --out
    resumes. Prints read = predicted + rejected (by reason)."""
    if not inputs:
        raise fail("no inputs: give at least one image, folder, bin, run or export")
    if not model.is_dir():
        raise fail(f"no model directory at {model}")

    from planktonzilla.inference.writers import output_format
    from planktonzilla.predict import Classifier
    from planktonzilla.predict.batch import predict_to_file

    try:
        output_format(out, fmt.value if fmt else None)
    except ValueError as exc:
        raise fail(str(exc)) from None
    wanted = [name.strip() for name in (labels or "").split(",") if name.strip()]
    try:
        classifier = Classifier.load(model, device=device, labels=wanted or None)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise fail(f"cannot load the model {model}: {exc}") from None
    try:
        report = predict_to_file(
            classifier,
            [str(p) for p in inputs],
            out,
            fmt=fmt.value if fmt else None,
            top_k=top_k,
            batch_size=batch_size,
            resume=resume,
            progress=progress,
            category=category.value,
            limit=limit,
            where=where,
        )
    except ValueError as exc:  # e.g. --out exists and is not a pz predict output
        raise fail(str(exc)) from None
    print(report.summary())


def register(app: typer.Typer) -> None:
    app.command()(predict)
