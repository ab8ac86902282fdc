"""`pz serve`: the web app and JSON API (see `planktonzilla.serve`).

pz serve models/supervised --store store --port 8000
"""

from pathlib import Path

import typer

from planktonzilla.cli._common import DEVICE_OPTION, console

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    model: Path = typer.Argument(..., help="Model directory (config.json + model.safetensors)."),
    store: Path | None = typer.Option(
        None, "--store", "-s", help="Object store to browse (counts, map, samples, report)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    device: str = DEVICE_OPTION,
    max_upload_mb: float = typer.Option(
        50.0, "--max-upload-mb", min=0.001, help="Largest request body accepted (MB)."
    ),
    max_files: int = typer.Option(
        500, "--max-files", min=1, help="Most images per request (archive members count)."
    ),
) -> None:
    """Serve a web page and JSON API that classify uploaded images (or zip archives of
    them) and browse a store. API docs at /docs, all offline."""
    import uvicorn

    from planktonzilla.serve import Limits, create_app
    from planktonzilla.serve.app import LOOPBACK_HOSTS

    if store is not None and not store.is_dir():
        console.print(f"[red]no store at {store}[/red]")
        raise typer.Exit(2)
    limits = Limits(max_request_bytes=int(max_upload_mb * 1024 * 1024), max_files=max_files)
    try:
        # a loopback server answers to loopback names only (DNS rebinding); one bound to all
        # interfaces to any name; one bound to an address to it and to loopback names
        allowed = (
            LOOPBACK_HOSTS
            if host in _LOOPBACK
            else ("*",)
            if host in ("0.0.0.0", "::")
            else (host, *LOOPBACK_HOSTS)
        )
        web_app = create_app(
            model, store=store, limits=limits, device=device, allowed_hosts=allowed
        )
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if host not in _LOOPBACK:
        console.print(
            f"[yellow]listening on {host}: anyone who can reach this port can use the model "
            "and read the store (there is no login)[/yellow]"
        )
    shown = f"[{host}]" if ":" in host else host
    console.print(f"planktonzilla serving on http://{shown}:{port}  (API docs: /docs)")
    uvicorn.run(
        web_app, host=host, port=port, log_level="info", access_log=False, timeout_keep_alive=5
    )
