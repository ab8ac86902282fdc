"""`pz evaluate`: evaluation protocols on a store split."""

import typer


def register(app: typer.Typer) -> None:
    pass
