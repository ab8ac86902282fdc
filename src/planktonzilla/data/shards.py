"""Training from WebDataset shards (`pz export webdataset`), local or streamed by URL.

    index = ShardIndex.open("s3://bucket/plankton-wds")           # any fsspec URL, or a path
    loader = make_shard_loader(index, "train", batch_size=256, train=True,
                               preprocess=model.preprocess, rank=rank, world_size=world)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for images, labels in loader:                       # uint8 [B/W, 3, S, S], int64 [B/W]

The export root holds ``index.json`` (the label space: classes, class lineages, per-side class
counts, split and filters; the shards of each side with their sample counts) beside the tars,
so a multi-node run needs only that URL.

Pixels: the loader's own code (`planktonzilla.data.loader._render`, `Augment` and the per-item
augmentation parameters seeded by (seed, epoch, position in the global order)): an item is
rendered identically from a shard and from the store.

Order and ranks. A side's shards are read in `lanes` parallel streams: each epoch the shards
are permuted (a pure function of seed and epoch) and dealt round-robin to the lanes; each lane
reads its shards in turn through a seeded shuffle buffer of `buffer` items. Global batch k is
the concatenation, lane by lane, of items [k*B/L, (k+1)*B/L) of every lane; rank r of W takes
lanes [r*L/W, (r+1)*L/W), i.e. its contiguous slice [r*B/W, (r+1)*B/W) of every global batch,
and reads only those lanes' shards (1/W of the data). So for a fixed `lanes` the global
batches are the same for every world size W dividing it (W processes x B/W train like 1 x B);
`lanes` defaults to W (every rank reads its own shards); set it (e.g. to the largest W you
will use) to keep the order when W changes. An epoch is as many full global batches as the
shortest lane allows. Evaluation (`train=False`) reads the side in index order, no shuffle,
the last short batch kept and split like `EpochBatchSampler`'s; every rank reads every shard.

I/O runs in the main process (the sampler streams the tars and hands each rank's batch of
encoded bytes, as one key, to one DataLoader worker, which decodes and augments it); with
CUDA the batches are pinned. Class-balanced sampling needs random access: use the store.
"""

from __future__ import annotations

import json
import multiprocessing
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from planktonzilla.data.loader import _IDENTITY, Augment, _augment_params, _new_batch, _render
from planktonzilla.data.preprocess import PreprocessConfig
from planktonzilla.exceptions import InputError

__all__ = ["ShardIndex", "ShardBatchSampler", "make_shard_loader", "read_shard"]

#: Items of each lane's shuffle buffer (encoded images held in memory per lane).
BUFFER = 2000
#: Image members the exporter writes (the store's formats, `jpeg` as `jpg`).
_IMAGE_EXTS = ("jpg", "png", "tiff", "bmp", "gif")


def _join(root: str, name: str) -> str:
    return name if "://" in name or name.startswith("/") else f"{root.rstrip('/')}/{name}"


@dataclass(frozen=True)
class ShardIndex:
    """An export's ``index.json``: the label space (like `DatasetView`: `classes`,
    `class_lineages`, `filters`, `manifest_hash`, `split_info`, `scheme`) and its shards."""

    root: str
    info: dict[str, Any]

    @classmethod
    def open(cls, url: str) -> ShardIndex:
        """The export at `url` (its folder, or its index.json): a path or any fsspec URL."""
        import fsspec

        url = str(url)
        root = url[: -len("/index.json")] if url.endswith("/index.json") else url.rstrip("/")
        try:
            with fsspec.open(f"{root}/index.json", "rb") as fh:
                info = json.load(fh)
        except FileNotFoundError:
            raise InputError(f"no index.json at {root}: not a `pz export webdataset`") from None
        if not str(info.get("format", "")).startswith("planktonzilla-webdataset/"):
            raise InputError(f"{root}/index.json is not a planktonzilla WebDataset index")
        return cls(root, info)

    classes = property(lambda self: list(self.info["classes"]))
    class_lineages = property(lambda self: list(self.info["class_lineages"]))
    filters = property(lambda self: dict(self.info["filters"]))
    manifest_hash = property(lambda self: self.info["manifest_hash"])
    split_info = property(lambda self: dict(self.info["split_info"]))
    scheme = property(lambda self: self.info["scheme"])

    @property
    def num_classes(self) -> int:
        return len(self.info["classes"])

    def samples(self, side: str) -> int:
        return int(self.info["sides"].get(side, {}).get("samples", 0))

    def class_counts(self, side: str) -> np.ndarray:
        counts = self.info["sides"].get(side, {}).get("class_counts") or [0] * self.num_classes
        return np.asarray(counts, dtype=np.int64)

    def shards(self, side: str) -> list[tuple[str, int]]:
        """(URL, samples) of each shard of `side`, in export (object id) order."""
        entries = self.info["sides"].get(side, {}).get("shards", [])
        return [(_join(self.root, s["url"]), int(s["samples"])) for s in entries]

    def first_images(self, side: str, n: int) -> list[bytes]:
        """The first n encoded images of `side` (those of the smallest object ids)."""
        urls = [u for u, _ in self.shards(side)]
        return [data for _, data, _ in islice((s for u in urls for s in read_shard(u)), n)]


def read_shard(url: str) -> Iterator[tuple[str, bytes, int]]:
    """(object id, encoded image, label index) of each sample of one tar shard, in order."""
    import fsspec

    with fsspec.open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        key, parts = None, {}
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            stem, _, ext = base.partition(".")
            if stem != key:
                if parts:
                    yield _sample(url, key, parts)
                key, parts = stem, {}
            if ext == "json" or ext in _IMAGE_EXTS:
                parts[ext] = tar.extractfile(member).read()
        if parts:
            yield _sample(url, key, parts)


def _sample(url: str, key: str, parts: dict[str, bytes]) -> tuple[str, bytes, int]:
    image = next((parts[e] for e in _IMAGE_EXTS if e in parts), None)
    if image is None or "json" not in parts:
        raise InputError(f"{url}: sample {key!r} lacks an image or its .json")
    return key, image, int(json.loads(parts["json"])["label_index"])


def _lane(urls: list[str], rng: np.random.Generator, buffer: int) -> Iterator[tuple]:
    """The samples of `urls`, in turn, through a seeded shuffle buffer (deterministic)."""
    held: list[tuple] = []
    draws, used = rng.integers(buffer, size=4096), 0
    for url in urls:
        for item in read_shard(url):
            if len(held) < buffer:
                held.append(item)
                continue
            if used == len(draws):
                draws, used = rng.integers(buffer, size=4096), 0
            j = int(draws[used])
            used += 1
            yield held[j]
            held[j] = item
    for j in rng.permutation(len(held)).tolist():
        yield held[j]


@dataclass(frozen=True, slots=True)
class _ShardBatch:
    """What the sampler hands a worker: encoded images at global positions start, start+1…"""

    seed: int
    epoch: int
    start: int
    object_ids: list[str]
    images: list[bytes]
    labels: np.ndarray
    augment: Augment | None


class ShardImages(Dataset):
    """Decodes `_ShardBatch` keys into (uint8 [n, 3, S, S], int64 [n]) with the loader's
    rendering and augmentation."""

    def __init__(self, preprocess: PreprocessConfig):
        self.preprocess = preprocess
        self.image_size = preprocess.size

    def __getitem__(self, key: _ShardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        n, s, aug = len(key.images), self.image_size, key.augment
        out = _new_batch((n, 3, s, s))
        arr = out.numpy()
        if aug is None:
            params, max_scale = [_IDENTITY] * n, 1.0
        else:
            params = _augment_params(aug, key.seed, key.epoch, key.start + np.arange(n))
            max_scale = aug.scale[1]
        for j, (data, p) in enumerate(zip(key.images, params, strict=True)):
            a = _render(data, self.preprocess, p, max_scale)
            arr[j] = a if a.ndim == 2 else a.transpose(2, 0, 1)
        return out, torch.from_numpy(key.labels)


class ShardBatchSampler(Sampler):
    """This rank's slice of each global batch of a side's shards (see the module docstring)."""

    def __init__(
        self,
        index: ShardIndex,
        side: str,
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        epoch: int = 0,
        skip_batches: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lanes: int | None = None,
        buffer: int = BUFFER,
        augment: Augment | None = None,
    ):
        lanes = lanes or world_size
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.shards = index.shards(side)
        if train:
            if lanes % world_size or batch_size % lanes:
                raise ValueError(
                    f"lanes ({lanes}) must be a multiple of the world size ({world_size})"
                    f" and divide the global batch ({batch_size})"
                )
            if len(self.shards) < lanes:
                raise ValueError(
                    f"{len(self.shards)} {side} shard(s) for {lanes} lanes: export smaller"
                    " shards (--samples-per-shard) or use fewer lanes"
                )
        self.side, self.train, self.lanes, self.buffer = side, train, lanes, buffer
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.augment = augment
        self.epoch, self.skip_batches = epoch, skip_batches

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Iterate epoch `epoch` next, starting at global batch `skip_batches`."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def _lanes(self) -> list[list[int]]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))
        return [perm[lane :: self.lanes].tolist() for lane in range(self.lanes)]

    def _num_global(self) -> int:
        if self.train:
            per_lane = self.batch_size // self.lanes
            return min(sum(self.shards[i][1] for i in lane) for lane in self._lanes()) // per_lane
        return -(-sum(n for _, n in self.shards) // self.batch_size)

    def __len__(self) -> int:
        if self.train:
            return max(0, self._num_global() - self.skip_batches)
        n, b = sum(n for _, n in self.shards), self.batch_size
        return sum(
            1 for k in range(self.skip_batches, self._num_global()) if self._slice(k, n, b)[1] > 0
        )

    def _slice(self, k: int, n: int, b: int) -> tuple[int, int]:
        """(offset, length) of this rank's part of evaluation batch k (np.array_split sizes)."""
        m = min(b, n - k * b)
        base, extra = divmod(m, self.world_size)
        r = self.rank
        return r * base + min(r, extra), base + (r < extra)

    def __iter__(self) -> Iterator[_ShardBatch]:
        return self._train() if self.train else self._evaluate()

    def _key(self, start: int, items: list[tuple[str, bytes, int]]) -> _ShardBatch:
        ids, images, labels = zip(*items, strict=True) if items else ((), (), ())
        labels = np.asarray(labels, dtype=np.int64)
        return _ShardBatch(
            self.seed, self.epoch, start, list(ids), list(images), labels, self.augment
        )

    def _train(self) -> Iterator[_ShardBatch]:
        b, per_rank = self.batch_size // self.lanes, self.batch_size // self.world_size
        mine = range(
            self.rank * self.lanes // self.world_size,
            (self.rank + 1) * self.lanes // self.world_size,
        )
        lanes = self._lanes()
        streams = [
            _lane(
                [self.shards[i][0] for i in lanes[lane]],
                np.random.default_rng([self.seed, self.epoch, lane]),
                self.buffer,
            )
            for lane in mine
        ]
        for k in range(self._num_global()):
            items = [item for stream in streams for item in islice(stream, b)]
            if k >= self.skip_batches:
                yield self._key(k * self.batch_size + self.rank * per_rank, items)

    def _evaluate(self) -> Iterator[_ShardBatch]:
        n, b = sum(n for _, n in self.shards), self.batch_size
        stream = (item for url, _ in self.shards for item in read_shard(url))
        for k in range(self._num_global()):
            batch = list(islice(stream, b))
            lo, m = self._slice(k, n, b)
            if k >= self.skip_batches and m:
                yield self._key(k * b + lo, batch[lo : lo + m])


def make_shard_loader(
    index: ShardIndex,
    side: str,
    *,
    batch_size: int,
    train: bool,
    preprocess: PreprocessConfig,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    lanes: int | None = None,
    buffer: int = BUFFER,
    augment: Augment | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int = 4,
) -> DataLoader:
    """Like `make_loader`, from an export's shards: (uint8 [B/W, 3, S, S], int64 [B/W]) for
    rank `rank` of `world_size`; `batch_size` is the global batch. `train`: shuffled,
    augmented (`augment`, default `Augment()`), full batches only."""
    sampler = ShardBatchSampler(
        index,
        side,
        batch_size=batch_size,
        train=train,
        seed=seed,
        epoch=epoch,
        skip_batches=skip_batches,
        rank=rank,
        world_size=world_size,
        lanes=lanes,
        buffer=buffer,
        augment=(augment or Augment()) if train else None,
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
        if "fork" in multiprocessing.get_all_start_methods():
            extra["multiprocessing_context"] = "fork"
    return DataLoader(
        ShardImages(preprocess),
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        **extra,
    )
