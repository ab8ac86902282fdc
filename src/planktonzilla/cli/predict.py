"""`pz predict`: classify images, bins, runs and exports into CSV / Parquet / EcoTaxa."""

import typer


def register(app: typer.Typer) -> None:
    pass
