"""`pz ingest PATH…` detects each input's kind (`planktonzilla.readers.detect`); one
sub-command per kind gives that reader's own options. Each is a thin wrapper around a reader
and `ObjectStore.ingest`."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from planktonzilla.cli._common import (
    INGEST_FLAGS,
    SOURCE_OPTION,
    STORE_OPTION,
    WORKERS_OPTION,
    run_ingest,
)


class _IngestGroup(TyperGroup):
    """`pz ingest PATH…` (no sub-command) means `pz ingest auto PATH…`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["auto", *args]
        return super().resolve_command(ctx, args)


ingest_app = typer.Typer(
    help="Import images (and their metadata) into a store: `pz ingest PATH… --store S "
    "--source NAME` detects each input's kind; the sub-commands give a reader's own options.",
    no_args_is_help=True,
    cls=_IngestGroup,
)


@ingest_app.callback()
def _ingest_options(
    retry_rejected: bool = typer.Option(
        False,
        "--retry-rejected",
        help="Read again the inputs the source rejected before (e.g. repaired in place): each "
        "old rejection is replaced by the new outcome. `pz ingest --retry-rejected PATH…`.",
    ),
) -> None:
    INGEST_FLAGS["retry_rejected"] = retry_rejected


INSTRUMENT_OPTION = typer.Option(
    None, "--instrument", help="Instrument name stamped on each image."
)
LICENSE_OPTION = typer.Option(None, "--license", help="Licence (SPDX id, e.g. CC-BY-4.0).")
LICENSE_URL_OPTION = typer.Option(None, "--license-url", help="URL of the licence text.")
PIXEL_SIZE_OPTION = typer.Option(None, "--pixel-size-um", help="Pixel size in micrometres.")


@ingest_app.command("auto")
def ingest_auto(
    paths: list[Path] = typer.Argument(
        ...,
        help="Any mix of image folders, images, IFCB bins, FlowCam runs, EcoTaxa exports, "
        "zips of images and stores (detected by content).",
    ),
    store: Path = STORE_OPTION,
    source: str = SOURCE_OPTION,
    instrument: str = INSTRUMENT_OPTION,
    license: str = LICENSE_OPTION,
    license_url: str = LICENSE_URL_OPTION,
    pixel_size_um: float = PIXEL_SIZE_OPTION,
    workers: int = WORKERS_OPTION,
) -> None:
    """Ingest inputs of any kind, each read by the reader its content calls for; a path of no
    known kind is recorded as rejected with its reason."""
    from planktonzilla.readers.detect import read_inputs

    run_ingest(
        read_inputs(paths, ingest=True),
        store=store,
        source=source,
        workers=workers,
        instrument=instrument,
        license=license,
        license_url=license_url,
        pixel_size_um=pixel_size_um,
    )


@ingest_app.command("folder")
def ingest_folder(
    path: Path = typer.Argument(..., exists=True, file_okay=False, help="Root of the image tree."),
    store: Path = STORE_OPTION,
    source: str = SOURCE_OPTION,
    labels: list[Path] = typer.Option(
        None,
        "--labels",
        help="CSV of file,label (repeatable). Root *labels.csv files are used when none is given.",
    ),
    instrument: str = INSTRUMENT_OPTION,
    license: str = LICENSE_OPTION,
    license_url: str = LICENSE_URL_OPTION,
    pixel_size_um: float = PIXEL_SIZE_OPTION,
    workers: int = WORKERS_OPTION,
) -> None:
    """Ingest a class-per-folder tree (optionally under train/ val/ test/), or a tree labelled
    by CSV files. Every file is either stored or recorded as rejected with its reason."""
    from planktonzilla.readers.folder import read_folder

    run_ingest(
        read_folder(path, labels=labels or None),
        store=store,
        source=source,
        workers=workers,
        instrument=instrument,
        license=license,
        license_url=license_url,
        pixel_size_um=pixel_size_um,
    )


@ingest_app.command("ifcb")
def ingest_ifcb(
    paths: list[Path] = typer.Argument(
        ..., exists=True, help="IFCB bins (.hdr/.adc/.roi files) or folders searched for them."
    ),
    store: Path = STORE_OPTION,
    source: str = SOURCE_OPTION,
    labels: list[Path] = typer.Option(
        None,
        "--labels",
        exists=True,
        help="Manual-annotation .mat files, class2use.mat, or folders of them and/or of class "
        "folders holding <pid>.png ROI images (repeatable).",
    ),
    license: str = LICENSE_OPTION,
    license_url: str = LICENSE_URL_OPTION,
    pixel_size_um: float = PIXEL_SIZE_OPTION,
    workers: int = WORKERS_OPTION,
) -> None:
    """Ingest IFCB raw bins: one image per ROI (sample id = bin id, time from the bin name).
    Empty, partial (no .roi) and invalid bins are recorded as rejected with their reason."""
    from planktonzilla.readers.ifcb import read_ifcb

    try:
        records = read_ifcb(paths, labels=labels or None)
    except (ValueError, OSError, ImportError) as e:
        raise typer.BadParameter(str(e), param_hint="--labels") from e
    run_ingest(
        records,
        store=store,
        source=source,
        workers=workers,
        license=license,
        license_url=license_url,
        pixel_size_um=pixel_size_um,
    )


@ingest_app.command("flowcam")
def ingest_flowcam(
    paths: list[Path] = typer.Argument(
        ..., exists=True, help="FlowCam run folders (or folders of runs), .lst or .flb files."
    ),
    store: Path = STORE_OPTION,
    source: str = SOURCE_OPTION,
    license: str = LICENSE_OPTION,
    license_url: str = LICENSE_URL_OPTION,
    workers: int = WORKERS_OPTION,
) -> None:
    """Ingest FlowCam VisualSpreadsheet runs: each particle cropped from its collage, labelled
    from the run's .cla (a library's particles by the library name). Particles whose collage is
    missing or whose box leaves it are recorded as rejected."""
    from planktonzilla.readers.flowcam import read_flowcam

    run_ingest(
        read_flowcam(paths),
        store=store,
        source=source,
        workers=workers,
        license=license,
        license_url=license_url,
    )


@ingest_app.command("ecotaxa")
def ingest_ecotaxa(
    paths: list[Path] = typer.Argument(
        ..., exists=True, help="EcoTaxa / EcoPart TSVs, folders of them, or zip bundles."
    ),
    store: Path = STORE_OPTION,
    source: str = SOURCE_OPTION,
    missing_images: str = typer.Option(
        "reject",
        "--missing-images",
        help="What to do with rows whose image is absent: 'reject' (missing_file) or "
        "'metadata' (store the row as a metadata-only object).",
    ),
    instrument: str = INSTRUMENT_OPTION,
    license: str = LICENSE_OPTION,
    license_url: str = LICENSE_URL_OPTION,
    pixel_size_um: float = PIXEL_SIZE_OPTION,
    workers: int = WORKERS_OPTION,
) -> None:
    """Ingest EcoTaxa exports (TSV with or without the [t]/[f] type row, folders, zip bundles
    with images) and EcoPart *_ZOO_raw_* exports (metadata-only objects placed by the
    per-profile metadata summary). Every object row is stored or rejected with its reason."""
    from planktonzilla.readers.ecotaxa import read_ecotaxa

    if missing_images not in ("reject", "metadata"):
        raise typer.BadParameter("use 'reject' or 'metadata'", param_hint="--missing-images")
    run_ingest(
        read_ecotaxa(paths, missing_images=missing_images),  # type: ignore[arg-type]
        store=store,
        source=source,
        workers=workers,
        instrument=instrument,
        license=license,
        license_url=license_url,
        pixel_size_um=pixel_size_um,
    )
