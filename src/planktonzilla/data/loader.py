"""Training data: store rows -> uint8 image batches, reproducible under any number of DDP ranks
and DataLoader workers.

    loader = make_loader(store, view.side("train"), batch_size=256, train=True,
                         preprocess=model.preprocess, seed=0, rank=rank, world_size=world)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for images, labels in loader:                       # uint8 [B/W, 3, S, S], int64 [B/W]
            x = model.preprocess.normalize(images.to(device, non_blocking=True))

Order. One *global* order per epoch, a pure function of (seed, epoch) (and of the view and
the memory mode); global batch k is `order[k*B:(k+1)*B]` for every world size, and rank r takes
its r-th contiguous slice of B/W items. `skip_batches=k` starts the epoch at global batch k.
Augmentations are seeded per item by (seed, epoch, position in the global order), so which
rank or which worker builds an item never changes it. The sampler runs in the main process and
hands each batch, as one key, to one DataLoader worker (order preserved by the DataLoader).

Memory. A view whose image bytes fit `memory_budget` (1 GiB by default) is read from the store
once into one Arrow buffer (shared copy-on-write by forked workers). A larger view is read by
Parquet row group (1024 rows) through a small per-worker LRU cache, and its training order is
a *block shuffle*: row groups are shuffled, grouped into windows of `window_groups` row groups,
and items are shuffled within each window, so a batch touches only a few row groups.

Pixels. Un-augmented items follow the image contract exactly (`planktonzilla.data.preprocess`:
resize the longest side to S, pad to a square with the fill). Training adds any-angle rotation
filled like the padding, both flips, mild zoom and contrast/brightness jitter; every geometric
step runs at the smaller of the native and target resolutions, once.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from planktonzilla.data.preprocess import (
    INTERPOLATIONS,
    PreprocessConfig,
    border_fill,
    decode,
    fill_for_mode,
)

__all__ = [
    "MEMORY_BUDGET",
    "Augment",
    "EpochBatchSampler",
    "ImageTable",
    "make_loader",
]

#: Views whose image bytes are at most this are loaded into memory once.
MEMORY_BUDGET = 1 << 30
#: Row groups mixed in one block-shuffle window (out-of-memory mode).
WINDOW_GROUPS = 8
#: Row groups of encoded images each worker keeps (out-of-memory mode).
CACHE_GROUPS = 24

_AFFINE = Image.Transform.AFFINE


# ------------------------------------------------------------------------------ pixels
@dataclass(frozen=True)
class Augment:
    """Training augmentations that suit plankton (no "up": any angle, both flips)."""

    rotate: bool = True  # any angle in [0, 360)
    flip: bool = True  # horizontal and vertical, each p = 0.5
    scale: tuple[float, float] = (0.85, 1.15)  # zoom of the padded square (log-uniform)
    contrast: tuple[float, float] = (0.8, 1.25)  # around the background level (log-uniform)
    brightness: float = 0.08  # additive, fraction of 255, uniform in [-b, b]


@dataclass(frozen=True, slots=True)
class _Params:
    angle: float = 0.0
    flip_h: bool = False
    flip_v: bool = False
    scale: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0  # in 0-255 units


_IDENTITY = _Params()


def _render(
    data: bytes, cfg: PreprocessConfig, p: _Params = _IDENTITY, max_scale: float = 1.0
) -> np.ndarray:
    """uint8 [size, size] (greyscale) or [size, size, 3]. Without augmentation this is the
    contract's own path (`PreprocessConfig.render`); augmented, the geometric steps run once,
    at the smaller of the native and target resolutions, filled like the contract."""
    if p is _IDENTITY:
        return cfg.render(*decode(data))
    size = cfg.size
    im, pixels = decode(data, math.ceil(size * max_scale))
    fill = border_fill(pixels) if cfg.fill == "border" else cfg.fill
    im, fill = fill_for_mode(fill, im.mode, im)
    w, h = im.size
    k = size * p.scale / max(w, h)  # overall scale of the content
    if k < 1:  # shrink first (antialiased), then place at scale 1 on the size x size canvas
        w, h = max(1, round(w * k)), max(1, round(h * k))
        im = im.resize((w, h), INTERPOLATIONS[cfg.interpolation], reducing_gap=3.0)
        side = size
    else:  # place at native scale on a canvas of side ~L/scale, enlarge at the end
        side = max(1, round(size / k))
    if p.angle or p.flip_h or p.flip_v:
        t = math.radians(p.angle)
        cos, sin = math.cos(t), math.sin(t)
        fx, fy = (-1.0 if p.flip_h else 1.0), (-1.0 if p.flip_v else 1.0)
        a, b, d, e = fx * cos, fx * sin, -fy * sin, fy * cos  # output -> input
        co = side / 2
        c, f = w / 2 - (a + b) * co, h / 2 - (d + e) * co
        canvas = im.transform(
            (side, side),
            _AFFINE,
            (a, b, c, d, e, f),
            INTERPOLATIONS[cfg.interpolation],
            fillcolor=fill,
        )
    elif side == w == h:
        canvas = im
    else:
        canvas = Image.new(im.mode, (side, side), fill)
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    if p.contrast != 1.0 or p.brightness:
        pivot = float(np.mean(fill))
        lut = np.arange(256, dtype=np.float32)
        lut = np.clip((lut - pivot) * p.contrast + pivot + p.brightness, 0, 255)
        lut = np.rint(lut).astype(np.uint8)
        canvas = Image.fromarray(lut[np.asarray(canvas)], canvas.mode)
    if side != size:
        canvas = canvas.resize((size, size), INTERPOLATIONS[cfg.interpolation])
    return np.asarray(canvas)


# -------------------------------------------------------------- per-item randomness
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised, wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(seed: int, epoch: int, positions: np.ndarray, n: int) -> np.ndarray:
    """[len(positions), n] uniforms in [0, 1), a pure function of (seed, epoch, position)."""
    with np.errstate(over="ignore"):
        key = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
        key = _mix(key ^ (np.uint64(epoch & 0xFFFFFFFF) + _GOLDEN))
        h = _mix(key ^ (positions.astype(np.uint64) * _GOLDEN))
        cols = [_mix(h + np.uint64(j + 1) * _GOLDEN) >> np.uint64(11) for j in range(n)]
    return np.stack(cols, axis=1).astype(np.float64) * (1.0 / (1 << 53))


def _log_uniform(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))


def _augment_params(aug: Augment, seed: int, epoch: int, positions: np.ndarray) -> list[_Params]:
    u = _uniforms(seed, epoch, positions, 6)
    angle = u[:, 0] * 360.0 if aug.rotate else np.zeros(len(u))
    fh = (u[:, 1] < 0.5) & aug.flip
    fv = (u[:, 2] < 0.5) & aug.flip
    scale = _log_uniform(u[:, 3], *aug.scale)
    contrast = _log_uniform(u[:, 4], *aug.contrast)
    bright = (2 * u[:, 5] - 1) * aug.brightness * 255.0
    return [
        _Params(float(a), bool(h), bool(v), float(s), float(c), float(b))
        for a, h, v, s, c, b in zip(angle, fh, fv, scale, contrast, bright, strict=True)
    ]


# ---------------------------------------------------------------------- dataset
@dataclass(frozen=True, slots=True)
class _BatchKey:
    """What the sampler hands a worker: items `indices` at global positions start, start+1…"""

    seed: int
    epoch: int
    start: int
    indices: np.ndarray
    augment: Augment | None


def _new_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """uint8 tensor; in a worker, allocated in shared memory (no copy on the way out)."""
    if get_worker_info() is not None:
        try:
            proto = torch.empty(0, dtype=torch.uint8)
            storage = proto._typed_storage()._new_shared(math.prod(shape))
            return proto.new(storage).view(shape)
        except Exception:  # private API moved: fall back to an ordinary tensor
            pass
    return torch.empty(shape, dtype=torch.uint8)


class ImageTable(Dataset):
    """The rows of a view (a pyarrow table with `object_id` and `label_index`) as images.

    `dataset[i]` -> (uint8 [3, S, S], label) without augmentation; batches come from
    `EpochBatchSampler` keys (see `make_loader`). Image bytes are held in memory when they fit
    `memory_budget`, otherwise read by row group through a per-process LRU cache.
    """

    def __init__(
        self,
        store,
        table: pa.Table,
        *,
        preprocess: PreprocessConfig | None = None,
        image_size: int | None = None,
        memory_budget: int = MEMORY_BUDGET,
        cache_groups: int = CACHE_GROUPS,
    ):
        self.store_path = Path(store.path)
        if preprocess is None:
            if image_size is None:
                raise TypeError("ImageTable needs preprocess= (or image_size=)")
            preprocess = PreprocessConfig(size=image_size)
        self.preprocess = preprocess
        self.image_size = preprocess.size
        self.cache_groups = cache_groups
        self.labels = np.asarray(
            table.column("label_index").to_numpy(zero_copy_only=False), dtype=np.int64
        )
        sources = None
        if "source" in table.column_names:
            sources = set(pc.unique(table.column("source")).to_pylist())
        self._locate(store, table.column("object_id"), sources)
        self.object_ids = table.column("object_id")  # to name an image that fails to decode
        self.in_memory = self.estimated_bytes <= memory_budget
        self._images: pa.Array | None = None
        self._pid = os.getpid()
        self._files: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[int, pa.Array] = OrderedDict()
        if self.in_memory:
            self._load_all()

    # -- where each row lives
    def _locate(self, store, object_ids: pa.ChunkedArray, sources: set | None) -> None:
        shards = store.shard_files("objects", sources)
        ids, group_start, group_file, group_rg, group_bytes = [], [], [], [], []
        total = 0
        for fi, rel in enumerate(shards):
            pf = pq.ParquetFile(rel)
            ids.append(pf.read(columns=["object_id"]).column(0))
            md = pf.metadata
            col = pf.schema_arrow.get_field_index("image")
            for rg in range(md.num_row_groups):
                meta = md.row_group(rg)
                group_start.append(total)
                group_file.append(fi)
                group_rg.append(rg)
                group_bytes.append(meta.column(col).total_uncompressed_size)
                total += meta.num_rows
        self._shards = shards
        self._group_file = np.asarray(group_file, dtype=np.int64)
        self._group_rg = np.asarray(group_rg, dtype=np.int64)
        starts = np.asarray(group_start, dtype=np.int64)
        if ids:
            all_ids = pa.chunked_array([c for a in ids for c in a.chunks], pa.string())
            pos = pc.index_in(object_ids, value_set=all_ids)
        else:
            pos = pa.nulls(len(object_ids), pa.int32())
        if pos.null_count:
            missing = pc.filter(object_ids, pc.is_null(pos))[0].as_py()
            raise ValueError(f"{pos.null_count} object_id(s) not in the store, e.g. {missing!r}")
        rows = np.asarray(pos.to_numpy(zero_copy_only=False), dtype=np.int64)
        self.groups = np.searchsorted(starts, rows, side="right") - 1  # row group of each item
        self.rows = rows - starts[self.groups] if len(rows) else rows  # row within it
        counts = np.bincount(self.groups, minlength=len(starts))
        sizes = np.diff(np.append(starts, total))
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(sizes > 0, counts / np.maximum(sizes, 1), 0.0)
        self.estimated_bytes = int(np.sum(share * np.asarray(group_bytes, dtype=np.float64)))

    def _own_process(self) -> None:
        if os.getpid() != self._pid:  # forked: open our own handles, start a fresh cache
            self._pid, self._files, self._cache = os.getpid(), {}, OrderedDict()

    def _file(self, fi: int) -> pq.ParquetFile:
        self._own_process()
        pf = self._files.get(fi)
        if pf is None:
            pf = self._files[fi] = pq.ParquetFile(self._shards[fi])
        return pf

    def _load_all(self) -> None:
        """Every image of the view, in view order, as one large_binary array."""
        chunks, where = [], []
        item_file = self._group_file[self.groups]
        for fi in np.unique(item_file).tolist():
            mine = np.nonzero(item_file == fi)[0]
            rgs = np.unique(self.groups[mine])  # sorted: read in this order
            pf = self._file(fi)
            col = pf.read_row_groups(self._group_rg[rgs].tolist(), columns=["image"]).column(0)
            lengths = np.array([pf.metadata.row_group(r).num_rows for r in self._group_rg[rgs]])
            first = np.cumsum(lengths) - lengths  # where each row group starts inside `col`
            take = first[np.searchsorted(rgs, self.groups[mine])] + self.rows[mine]
            chunks.append(col.take(pa.array(take)).combine_chunks().cast(pa.large_binary()))
            where.append(mine)
        if not chunks:
            self._images = pa.array([], pa.large_binary())
            return
        images = pa.concat_arrays(chunks)
        inverse = np.empty(len(self), dtype=np.int64)
        inverse[np.concatenate(where)] = np.arange(len(self))
        self._images = images.take(pa.array(inverse))
        self._files = {}

    def image_bytes(self, i: int) -> bytes:
        """The encoded image of item i."""
        if self._images is not None:
            return self._images[i].as_py()
        g = int(self.groups[i])
        self._own_process()
        col = self._cache.get(g)
        if col is None:
            pf = self._file(int(self._group_file[g]))
            col = pf.read_row_group(int(self._group_rg[g]), columns=["image"]).column(0)
            col = col.combine_chunks()
            self._cache[g] = col
            while len(self._cache) > self.cache_groups:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(g)
        return col[int(self.rows[i])].as_py()

    def __getstate__(self):  # spawn/forkserver workers reload rather than receive the bytes
        state = self.__dict__.copy()
        state.update(_images=None, _files={}, _cache=OrderedDict(), _pid=-1)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.in_memory:
            self._load_all()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        if isinstance(key, _BatchKey):
            return self._batch(key)
        i = int(key)
        a = _render(self.image_bytes(i), self.preprocess)
        img = torch.from_numpy(
            np.ascontiguousarray(
                np.broadcast_to(a[None] if a.ndim == 2 else a.transpose(2, 0, 1), (3, *a.shape[:2]))
            )
        )
        return img, int(self.labels[i])

    def _batch(self, key: _BatchKey) -> tuple[torch.Tensor, torch.Tensor]:
        idx = key.indices
        s = self.image_size
        out = _new_batch((len(idx), 3, s, s))
        arr = out.numpy()
        aug = key.augment
        if aug is not None:
            params = _augment_params(aug, key.seed, key.epoch, key.start + np.arange(len(idx)))
            max_scale = aug.scale[1]
        else:
            params, max_scale = [_IDENTITY] * len(idx), 1.0
        kept = []
        for j, (i, p) in enumerate(zip(idx.tolist(), params, strict=True)):
            a = self._render_or_skip(i, p, max_scale)
            if a is not None:
                arr[j] = a if a.ndim == 2 else a.transpose(2, 0, 1)
                kept.append(j)
        if len(kept) < len(idx):  # the batch shrinks by the images that failed
            if not kept:
                raise ValueError(f"none of the {len(idx)} images of a batch decodes (see above)")
            return out[kept], torch.from_numpy(self.labels[idx[kept]])
        return out, torch.from_numpy(self.labels[idx])

    def _render_or_skip(self, i: int, p: _Params, max_scale: float) -> np.ndarray | None:
        """The rendered image, or None (with a warning naming its object id) when its bytes
        do not decode: one corrupt image must not end a training run (`pz verify --deep`
        finds them all)."""
        try:
            return _render(self.image_bytes(i), self.preprocess, p, max_scale)
        except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, zlib.error…
            oid = self.object_ids[i].as_py()
            warnings.warn(f"skipped object {oid}: its image does not decode ({exc})", stacklevel=2)
            return None


# ---------------------------------------------------------------------- order
class EpochBatchSampler(Sampler):
    """Yields this rank's slice of each global batch of the epoch, as keys for `ImageTable`.

    The global order of an epoch is `global_order(epoch)` (a pure function of seed, epoch and
    the dataset); `batch_size` is the *global* batch; rank r gets items
    [k*B + r*B/W, k*B + (r+1)*B/W) of global batch k. Without `drop_last` the last, short
    global batch is split into W near-equal contiguous parts (a rank may get none).
    """

    def __init__(
        self,
        dataset: ImageTable,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        skip_batches: int = 0,
        rank: int = 0,
        world_size: int = 1,
        balanced: bool = False,
        drop_last: bool = True,
        augment: Augment | None = None,
        window_groups: int = WINDOW_GROUPS,
    ):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.dataset = dataset
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.balanced, self.drop_last, self.augment = balanced, drop_last, augment
        self.window_groups = window_groups
        self.epoch, self.skip_batches = epoch, skip_batches

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Iterate epoch `epoch` next, starting at global batch `skip_batches`."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """Item indices of the epoch's 1-process order (before batching)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        rng = np.random.default_rng([self.seed, epoch])
        if self.balanced:  # classes uniformly, then items uniformly (with replacement)
            labels = self.dataset.labels
            by_label = np.argsort(labels, kind="stable")
            classes, starts, counts = np.unique(
                labels[by_label], return_index=True, return_counts=True
            )
            cls = rng.integers(len(classes), size=n)
            pick = starts[cls] + (rng.random(n) * counts[cls]).astype(np.int64)
            return by_label[pick]
        if not self.shuffle:
            return np.arange(n)
        if self.dataset.in_memory:
            return rng.permutation(n)
        # block shuffle: shuffled row groups, windows of a few row groups, items shuffled inside
        groups = self.dataset.groups
        uniq = np.unique(groups)
        rank_of = np.empty(int(uniq.max()) + 1 if len(uniq) else 0, dtype=np.int64)
        rank_of[uniq[rng.permutation(len(uniq))]] = np.arange(len(uniq))
        window = rank_of[groups] // max(1, self.window_groups)
        return np.lexsort((rng.random(n), window))

    def _num_global(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _slice(self, k: int, n: int) -> tuple[int, int]:
        lo = k * self.batch_size
        m = min(self.batch_size, n - lo)
        w, r = self.world_size, self.rank
        if m == self.batch_size:
            per = m // w
            return lo + r * per, lo + (r + 1) * per
        base, extra = divmod(m, w)  # np.array_split sizes
        start = lo + r * base + min(r, extra)
        return start, start + base + (r < extra)

    def __len__(self) -> int:
        n = len(self.dataset)
        return sum(
            1
            for k in range(self.skip_batches, self._num_global())
            if self._slice(k, n)[1] > self._slice(k, n)[0]
        )

    def __iter__(self) -> Iterator[_BatchKey]:
        n = len(self.dataset)
        order = self.global_order()
        for k in range(self.skip_batches, self._num_global()):
            lo, hi = self._slice(k, n)
            if hi > lo:
                yield _BatchKey(self.seed, self.epoch, lo, order[lo:hi], self.augment)


# ---------------------------------------------------------------------- loader
def make_loader(
    store,
    table: pa.Table | ImageTable,
    *,
    batch_size: int,
    train: bool,
    preprocess: PreprocessConfig | None = None,
    image_size: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    balanced: bool = False,
    drop_last: bool | None = None,
    augment: Augment | None = None,
    memory_budget: int = MEMORY_BUDGET,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
) -> DataLoader:
    """A DataLoader of (uint8 [B/W, 3, S, S], int64 [B/W]) for rank `rank` of `world_size`.

    `batch_size` is the global batch B (divisible by W). `train`: shuffled, augmented
    (`augment`, default `Augment()`), drop_last; otherwise table order, no augmentation, the
    last short batch kept. `table` may be an `ImageTable` already built (reuse it across
    loaders to read the images once). Next epochs: `loader.sampler.set_epoch(e)`."""
    if isinstance(table, ImageTable):
        dataset = table
        wanted = preprocess.size if preprocess is not None else image_size
        if wanted is not None and dataset.image_size != wanted:
            raise ValueError(f"dataset built for {dataset.image_size} px, not {wanted}")
    else:
        dataset = ImageTable(
            store, table, preprocess=preprocess, image_size=image_size, memory_budget=memory_budget
        )
    sampler = EpochBatchSampler(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        seed=seed,
        epoch=epoch,
        skip_batches=skip_batches,
        rank=rank,
        world_size=world_size,
        balanced=balanced,
        drop_last=train if drop_last is None else drop_last,
        augment=(augment or Augment()) if train else None,
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
        if "fork" in multiprocessing.get_all_start_methods():
            extra["multiprocessing_context"] = "fork"  # workers share the in-memory images
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        **extra,
    )
