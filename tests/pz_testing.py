"""What several test packages share: the real data's place, a tiny random-weight model of each
kind over five real lineages, and a uvicorn server on a free loopback port. Session-scoped
fixtures built from these live in `conftest.py`."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

LINEAGES = [
    {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Copepoda", "order": "Calanoida",
     "name": "Calanoida", "rank": "order", "root_class": "living"},
    {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Copepoda", "name": "Copepoda",
     "rank": "class", "root_class": "living"},
    {"kingdom": "Animalia", "phylum": "Chaetognatha", "name": "Chaetognatha", "rank": "phylum",
     "root_class": "living"},
    {"kingdom": "Chromista", "phylum": "Myzozoa", "class": "Dinophyceae", "order": "Noctilucales",
     "name": "Noctilucales", "rank": "order", "root_class": "living"},
    {"name": "detritus", "rank": None, "root_class": "detritus"},
]  # fmt: skip
CLASSES = [lin["name"] for lin in LINEAGES]


def build_tiny_model(directory: Path, kind: str = "supervised") -> Path:
    """A random-weight model (vit_tiny, 32 px) of `kind` over `CLASSES`."""
    import torch

    from planktonzilla.models import build_model, save_model

    torch.manual_seed(0)
    config = {
        "kind": kind,
        "backbone": "vit_tiny",
        "preprocess": {"size": 32, "fill": "border"},
        "classes": CLASSES,
        "class_lineages": LINEAGES,
    }
    if kind == "clip":
        config.update(embed_dim=32, text={"width": 32, "heads": 2, "layers": 1})
    return save_model(build_model(config), directory)


@contextmanager
def running(app):
    """Serve `app` with uvicorn in a thread on a free loopback port; yield the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
