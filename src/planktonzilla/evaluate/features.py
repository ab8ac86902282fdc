"""What evaluation needs of a model (`Encoder`), and one cached forward pass over the store.

An encoder maps images to features (the input of few-shot, linear probes and the supervised
head) and, when it is CLIP-style, texts to the same space. Our model directories and open_clip
foundation models (BioCLIP, BioCLIP 2, OpenAI / LAION CLIPs) are both encoders, each with its
own preprocessing:

- ``supervised``: features = backbone output before the head; the head gives class logits;
- ``clip`` (ours): features = L2-normalised image embeddings; captions → text embeddings;
- ``open_clip``: the same through open_clip's own transform and tokenizer.

`FeatureCache` stores features per object id under ``<store>/cache/features/<key>/``, the key
being (encoder identity, store manifest hash, preprocessing): protocols and later runs reuse
one forward pass, and any set of objects (another split, another side) only computes what is
missing. Parts are written by atomic rename, so a killed run leaves a usable cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from planktonzilla.fileio import commit_file


class Encoder:
    """Base: `name`, `spec`, `kind`, `identity` (hash of the weights), `preprocessing` (a
    string naming the image pipeline: part of the cache key), `classes` and
    `class_lineages` (own label space, or None), `caption_style`."""

    name: str
    spec: str
    kind: str
    identity: str
    preprocessing: str
    image_size: int
    classes: list[str] | None = None
    class_lineages: list[dict[str, Any]] | None = None
    caption_style: str = "lineage"
    is_clip: bool = False

    def __init__(self, device: str | torch.device = "auto"):
        from planktonzilla.models import resolve_device

        self.device = resolve_device(device)

    def dataset(self, store, table: pa.Table):
        """A map-style dataset of model-ready float tensors ``[3, S, S]`` in table order."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a model-ready batch, float32 ``[B, D]``."""
        raise NotImplementedError

    def head_logits(self, features: np.ndarray) -> np.ndarray | None:
        """Logits over `classes` from cached features (None for foundation models)."""
        return None

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings ``[T, D]`` (CLIP-style encoders)."""
        raise TypeError(f"{self.name} is not a CLIP-style model: it has no text encoder")

    @property
    def logit_scale(self) -> float:
        return 100.0


class _Transformed(torch.utils.data.Dataset):
    """Image bytes of a store table → `transform(bytes)` tensors (workers share the bytes)."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images.image_bytes(i))


class PlanktonEncoder(Encoder):
    """A planktonzilla model directory (supervised or CLIP-style)."""

    def __init__(self, directory: str | os.PathLike, device: str | torch.device = "auto"):
        from planktonzilla.models import load_model

        super().__init__(device)
        self.directory = Path(directory)
        self.model = load_model(self.directory, device=self.device)
        config = self.model.config
        self.kind = self.model.kind
        self.is_clip = self.kind == "clip"
        self.spec = str(self.directory)
        self.name = config.get("name") or self.directory.name
        self.identity = weights_hash(self.directory)
        self.image_size = self.model.image_size
        self.preprocess = self.model.preprocess
        self.preprocessing = f"planktonzilla {self.preprocess.to_dict()}"
        self.classes = list(self.model.classes)
        self.class_lineages = [dict(lin) for lin in config["class_lineages"]]
        self.caption_style = config.get("caption_style", "lineage")
        self.filters = config.get("filters") or {}

    def dataset(self, store, table: pa.Table):
        from planktonzilla.data.loader import ImageTable

        cfg = self.preprocess
        images = ImageTable(store, table, preprocess=cfg)
        return _Transformed(images, lambda data: torch.from_numpy(cfg(data)).permute(2, 0, 1))

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.normalize(x.to(self.device))
        if self.is_clip:
            return self.model.encode_image(x).float()
        return self.model.backbone(x).float()

    @torch.inference_mode()
    def head_logits(self, features: np.ndarray) -> np.ndarray:
        f = torch.from_numpy(features).to(self.device)
        if self.is_clip:
            text = self.model.class_text_features().float()
            return (self.model.clip.logit_scale.exp() * f @ text.T).cpu().numpy()
        return self.model.head(f).float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not self.is_clip:
            return super().encode_texts(texts)
        tokens = self.model.tokenize(list(texts)).to(self.device)
        return self.model.encode_text(tokens).float().cpu().numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.model.clip.logit_scale.detach().exp()) if self.is_clip else 1.0


class OpenClipEncoder(Encoder):
    """Any open_clip model (`planktonzilla.evaluate.foundation.load_open_clip` specs)."""

    is_clip = True
    kind = "open_clip"
    caption_style = "bioclip"

    def __init__(self, spec: str, device: str | torch.device = "auto"):
        from planktonzilla.evaluate.foundation import load_open_clip

        super().__init__(device)
        self.fm = load_open_clip(spec, device=str(self.device))
        self.spec, self.name, self.identity = spec, self.fm.name, self.fm.identity
        self.image_size = self.fm.image_size
        self.preprocessing = f"open_clip {self.fm.preprocess!r}"

    def dataset(self, store, table: pa.Table):
        from planktonzilla.data.loader import ImageTable

        return _Transformed(ImageTable(store, table, image_size=self.image_size), self.fm.transform)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fm.encode_images(x.to(self.device)).float()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.fm.encode_texts(list(texts)).float().cpu().numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.fm.logit_scale)


def load_encoder(spec: str | os.PathLike, device: str = "cpu") -> Encoder:
    """A planktonzilla model directory, or any open_clip spec (hf-hub:…, ARCH:TAG,
    ARCH:checkpoint, a hub-style directory)."""
    path = Path(spec)
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        if config.get("format") == "planktonzilla-model":
            return PlanktonEncoder(path, device)
    return OpenClipEncoder(str(spec), device)


def weights_hash(directory: Path) -> str:
    """sha256 of a model directory's config and weights (the model's identity)."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(directory / name, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


class FeatureCache:
    """Features per object id for one (encoder, store, preprocessing); see the module
    docstring. ``cache = FeatureCache(store, encoder); x = cache.features(table)``.
    The parts on disk are read once per object; ``disk=False`` keeps features in memory
    only (nothing read or written)."""

    def __init__(
        self,
        store,
        encoder: Encoder,
        *,
        batch_size: int = 64,
        workers: int = 0,
        disk: bool = True,
        root: str | os.PathLike | None = None,
    ):
        self.store, self.encoder = store, encoder
        self.batch_size, self.workers, self.disk = batch_size, workers, disk
        key = hashlib.sha256(
            "\n".join([encoder.identity, store.manifest_hash(), encoder.preprocessing]).encode()
        ).hexdigest()[:32]
        self.key = key
        self.dir = (Path(root) if root is not None else store.layout.cache("features")) / key
        self.computed = 0  # images encoded by this object (the rest came from the cache)
        self._known: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        if self.disk and self.dir.is_dir():
            for part in sorted(self.dir.glob("part-*.npz")):
                with np.load(part, allow_pickle=False) as z:
                    for oid, row in zip(z["ids"].tolist(), z["features"], strict=True):
                        found[oid] = row
        return found

    def features(self, table: pa.Table, *, progress: bool = False) -> np.ndarray:
        """float32 ``[N, D]`` features of the table's objects, in table order; only the
        objects not cached yet are encoded."""
        if self._known is None:
            self._known = self._load()
        known = self._known
        ids = table["object_id"].to_pylist()
        missing = [i for i, oid in enumerate(ids) if oid not in known]
        if missing:
            new = extract(
                self.encoder,
                self.store,
                table.take(missing),
                batch_size=self.batch_size,
                workers=self.workers,
                progress=progress,
            )
            self.computed += len(missing)
            if self.disk:
                self._save([ids[i] for i in missing], new)
            for i, row in zip(missing, new, strict=True):
                known[ids[i]] = row
        if not ids:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([known[oid] for oid in ids]).astype(np.float32)

    def _save(self, ids: list[str], features: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex[:12]}.npz"
        tmp = self.dir / (name + ".tmp.npz")
        np.savez(tmp, ids=np.array(ids), features=features.astype(np.float32))
        commit_file(tmp, self.dir / name)
        info = self.dir / "encoder.json"
        if not info.exists():
            info.write_text(
                json.dumps(
                    {
                        "model": self.encoder.spec,
                        "identity": self.encoder.identity,
                        "preprocessing": self.encoder.preprocessing,
                        "store_manifest_hash": self.store.manifest_hash(),
                    },
                    indent=1,
                )
            )


def extract(
    encoder: Encoder,
    store,
    table: pa.Table,
    *,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """One forward pass: float32 ``[N, D]`` features of `table`'s objects, in order."""
    from torch.utils.data import DataLoader

    dataset = encoder.dataset(store, table)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    out = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"features ({encoder.name})", total=len(dataset))
    try:
        for x in loader:
            out.append(encoder.encode(x).cpu().numpy())
            if bar is not None:
                bar.update(task, advance=len(x))
    finally:
        if bar is not None:
            bar.stop()
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)
