"""`pz samples` (sampled volumes from instrument metadata) and `pz abundance` (counts and
concentrations per sample x taxon, a table and a plot)."""

from __future__ import annotations

from pathlib import Path

import typer

from planktonzilla.cli._common import DEVICE_OPTION, console

EXISTING_STORE = typer.Option(
    ..., "--store", "-s", exists=True, file_okay=False, help="Store directory."
)


def samples(
    paths: list[Path] = typer.Argument(
        None, help="IFCB bins, FlowCam runs, EcoPart exports (PAR files), EcoTaxa TSVs."
    ),
    store: Path = EXISTING_STORE,
    source: str = typer.Option(..., "--source", help="The store source these samples belong to."),
    volume_ml: float = typer.Option(
        None, "--volume-ml", help="A volume for every sample of the source that has none."
    ),
    depth_bin_m: float = typer.Option(5.0, "--depth-bin", help="UVP depth bin (m)."),
    lat: float = typer.Option(None, "--lat", min=-90, max=90, help="Station latitude."),
    lon: float = typer.Option(None, "--lon", min=-180, max=180, help="Station longitude."),
    depth: float = typer.Option(None, "--depth", min=0, help="Sampling depth (m)."),
) -> None:
    """Record the sampled volume of each sample of SOURCE in the store (samples/SOURCE.parquet,
    joined at read time), read from the instrument's own files."""
    from planktonzilla.ecology.volumes import read_samples, user_volumes, write_samples
    from planktonzilla.store import ObjectStore

    s = ObjectStore(store)
    rows, problems = read_samples(paths, depth_bin_m=depth_bin_m) if paths else ([], [])
    if volume_ml is not None:
        have = {r.sample_id for r in rows}
        con = s.connect()
        try:
            known = con.execute(
                "SELECT DISTINCT sample_id FROM objects WHERE source = ? AND sample_id IS NOT NULL"
                " AND sample_id NOT IN (SELECT sample_id FROM samples WHERE source = ?)",
                [source, source],
            ).fetchall()
        finally:
            con.close()
        rows += user_volumes(sorted({k for (k,) in known} - have), volume_ml)
    for row in rows:  # a fixed station (an IFCB on a dock) fills what the files do not say
        row.lat = row.lat if row.lat is not None else lat
        row.lon = row.lon if row.lon is not None else lon
        if row.depth_min is None and depth is not None:
            row.depth_min = row.depth_max = depth
    for line in problems:
        console.print(f"[yellow]skipped[/] {line}")
    n = write_samples(s, source, rows)
    without = sum(r.volume_ml is None for r in rows)
    console.print(
        f"{len(rows):,} sample volume(s) read ({without:,} without a volume: counts only); "
        f"samples/{source}.parquet holds {n:,}"
    )
    if problems:
        raise typer.Exit(1)


def abundance(
    store: Path = EXISTING_STORE,
    out: Path = typer.Option(..., "--out", "-o", help="Table: .parquet or .csv"),
    rank: str = typer.Option("genus", "--rank", help="kingdom … species"),
    unit: str = typer.Option("L", "--unit", help="Concentration per ml | L | m3"),
    predictions: Path = typer.Option(None, "--predictions", help="A pz predict output."),
    model: Path = typer.Option(
        None, "--model", help="Classify the store's images with this model first."
    ),
    device: str = DEVICE_OPTION,
    correction: str = typer.Option(None, "--correction", help="acc | pacc"),
    confusion: Path = typer.Option(None, "--confusion", help="acc: confusion matrix JSON."),
    validation: Path = typer.Option(None, "--validation", help="pacc: validation predictions."),
    where: str = typer.Option(None, "--where", help="SQL filter on the objects view."),
    plot: Path = typer.Option(None, "--plot", help="Plot: .png or .html"),
    n_boot: int = typer.Option(200, "--bootstrap", min=10, help="Bootstrap replicates."),
) -> None:
    """Counts and concentrations per sample x taxon (lineage-aware), from the store's labels or
    a model's predictions, optionally corrected for the classifier's errors."""
    from planktonzilla.ecology import abundance as ab
    from planktonzilla.store import ObjectStore

    s = ObjectStore(store)
    if model is not None and predictions is None:
        predictions = out.with_name(out.stem + ".predictions.parquet")
        n = ab.predict_store(s, model, predictions, where=where, device=device)
        console.print(f"classified {n:,} images into {predictions}")
    table = ab.abundance(
        s, rank=rank, unit=unit, predictions=predictions,
        correction=correction, confusion=confusion, validation=validation, where=where,
        n_boot=n_boot,
    )  # fmt: skip
    ab.write_table(table, out)
    console.print(f"wrote {table.num_rows:,} rows to {out}")
    if plot is not None:
        from planktonzilla.ecology.plots import plot_abundance

        console.print(f"wrote {plot_abundance(table, plot)}")


def register(app: typer.Typer) -> None:
    app.command()(samples)
    app.command()(abundance)
