"""`pz serve`: the web app and JSON API."""

import typer


def register(app: typer.Typer) -> None:
    pass
