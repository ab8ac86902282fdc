"""`pz report`: merge evaluation results into one report."""

import typer


def register(app: typer.Typer) -> None:
    pass
