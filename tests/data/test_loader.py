"""The training data loader on real isiis_ndsb images: pixels, order, ranks, workers."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from planktonzilla.data.loader import (
    Augment,
    EpochBatchSampler,
    ImageTable,
    make_loader,
)
from planktonzilla.data.preprocess import PreprocessConfig, normalize
from planktonzilla.readers.folder import read_folder
from planktonzilla.store import ObjectStore

# 10 + 27 + 49 + 85 = 171 images, deliberately imbalanced
CLASSES = ("heteropod", "echinopluteus", "amphipods", "fish_larvae_medium_body")
S = 32


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    tree = root / "tree"
    for name in CLASSES:
        (tree / name).mkdir(parents=True)
        for f in sorted((shared_data / "isiis_ndsb" / name).iterdir()):
            (tree / name / f.name).symlink_to(f)
    s = ObjectStore(root / "store")
    # small shards: several row groups, so the row-group mode has something to do
    report = s.ingest(read_folder(tree), source="isiis_ndsb", shard_rows=40)
    assert report.stored == 171
    return s


@pytest.fixture(scope="module")
def table(store):
    rows = store.query("SELECT object_id, raw_label FROM objects ORDER BY object_id")
    index = {name: i for i, name in enumerate(CLASSES)}
    labels = [index[x] for x in rows["raw_label"].to_pylist()]
    return pa.table({"object_id": rows["object_id"], "label_index": pa.array(labels)})


@pytest.fixture(scope="module")
def data(store, table):
    return ImageTable(store, table, image_size=S)


def _batches(loader, n=None):
    out = []
    for images, labels in loader:
        out.append((images.clone(), labels.clone()))
        if n is not None and len(out) == n:
            break
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


def _png(a: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------- pixels
def test_shapes_and_dtypes(store, data, table):
    loader = make_loader(store, data, batch_size=32, image_size=S, train=True)
    images, labels = next(iter(loader))
    assert images.shape == (32, 3, S, S) and images.dtype == torch.uint8
    assert images.is_contiguous()
    assert labels.shape == (32,) and labels.dtype == torch.int64
    assert len(loader) == 171 // 32
    one = PreprocessConfig(size=48)(data.image_bytes(0))
    assert one.shape == (48, 48, 3) and one.dtype == np.uint8
    image, label = data[0]
    assert image.shape == (3, S, S) and label == table["label_index"][0].as_py()
    x = normalize(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.dtype == torch.float32 and x.shape == images.shape
    expected = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5)
    assert normalize(images, (0.5,) * 3, (0.25,) * 3, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_pad_to_square_keeps_aspect_with_border_fill():
    tall = np.full((60, 20), 200, np.uint8)
    tall[5:55, 6:14] = 30  # a dark object inside a light background
    out = PreprocessConfig(size=60)(_png(tall))
    assert out.shape == (60, 60, 3)
    assert (out[:, :20] == 200).all() and (out[:, 40:] == 200).all()  # padding = border colour
    assert np.array_equal(out[:, 20:40, 0], tall)  # centred, unscaled at 60 px
    # colour background, upscaled 2x: the aspect (1:3) survives the resize
    rgb = np.zeros((30, 10, 3), np.uint8)
    rgb[:] = (10, 120, 200)
    rgb[3:27, 3:7] = (250, 250, 0)
    out = PreprocessConfig(size=60)(_png(rgb))
    assert (out[:, :18] == (10, 120, 200)).all() and (out[:, 42:] == (10, 120, 200)).all()
    cols = np.nonzero((out[:, :, 2] < 100).any(axis=0))[0]
    rows = np.nonzero((out[:, :, 2] < 100).any(axis=1))[0]
    assert 7 <= len(cols) <= 9 and 47 <= len(rows) <= 49  # 4 x 24 px object, scaled 2x
    assert abs(cols.mean() - 29.5) < 1 and abs(rows.mean() - 29.5) < 1
    explicit = PreprocessConfig(size=60, fill=0)(_png(tall))
    assert (explicit[:, :20] == 0).all()


def test_real_tall_image_is_centred(store, data):
    dims = store.query("SELECT width, height FROM objects ORDER BY object_id")  # = table order
    ratios = (dims["height"].to_numpy() / dims["width"].to_numpy()).tolist()
    i = int(np.argmax(ratios))
    assert ratios[i] > 1.5
    raw = np.asarray(Image.open(io.BytesIO(data.image_bytes(i))).convert("L"))
    border = np.concatenate((raw[0], raw[-1], raw[:, 0], raw[:, -1]))
    out = PreprocessConfig(size=64)(data.image_bytes(i))
    width = round(64 / ratios[i])
    margin = (64 - width) // 2
    assert margin >= 8
    pad = np.concatenate((out[:, : margin - 1, 0].ravel(), out[:, -margin + 1 :, 0].ravel()))
    assert np.all(pad == pad[0]) and abs(int(pad[0]) - float(np.median(border))) <= 1
    assert out[:, margin + 1 : 64 - margin - 1].std() > 0  # the object is in the middle


@pytest.mark.parametrize("kind", ["gif", "tiff16", "bmp", "rgba", "bigjpeg"])
def test_formats(kind):
    rng = np.random.default_rng(0)
    if kind == "gif":
        data = _png(rng.integers(0, 255, (30, 40), dtype=np.uint8), "GIF")
    elif kind == "tiff16":
        data = _png((rng.integers(0, 4000, (30, 40))).astype(np.uint16), "TIFF")
    elif kind == "bmp":
        data = _png(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), "BMP")
    elif kind == "rgba":
        data = _png(rng.integers(0, 255, (30, 40, 4), dtype=np.uint8), "PNG")
    else:
        big = np.full((1500, 3000), 90, np.uint8)
        big[500:1000, 1000:2000] = 240
        data = _png(big, "JPEG")
    out = PreprocessConfig(size=32)(data)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    if kind == "bigjpeg":  # decoded at reduced scale; 2:1 aspect -> 8 rows of padding each side
        assert abs(int(out[2, 16, 0]) - 90) <= 2 and abs(int(out[16, 16, 0]) - 240) <= 3


def test_augmentations_change_train_not_eval(store, data):
    eval_a = _batches(make_loader(store, data, batch_size=16, image_size=S, train=False), 2)
    eval_b = _batches(make_loader(store, data, batch_size=16, image_size=S, train=False), 2)
    assert _same(eval_a, eval_b)
    for j in range(16):  # eval is exactly preprocess(), in table order
        assert np.array_equal(
            eval_a[0][0][j].permute(1, 2, 0).numpy(), PreprocessConfig(size=S)(data.image_bytes(j))
        )
    sampler = EpochBatchSampler(data, batch_size=16, shuffle=False, augment=Augment())
    key = next(iter(sampler))
    train, _ = data[key]
    assert not torch.equal(train, eval_a[0][0])
    # rotation fills with the background, not black: corners stay near the border colour
    rot = Augment(flip=False, scale=(1, 1), contrast=(1, 1), brightness=0)
    key = next(iter(EpochBatchSampler(data, batch_size=16, shuffle=False, augment=rot)))
    rotated, _ = data[key]
    ys, xs = [0, 0, -1, -1], [0, -1, 0, -1]
    corners = rotated[:, 0, ys, xs].float().mean(dim=1)
    padded = eval_a[0][0][:, 0, ys, xs].float().mean(dim=1)  # = the border fill
    assert (corners - padded).abs().max() < 20
    assert corners.min() > 100  # isiis backgrounds are light


# ------------------------------------------------------------------------- order
def test_seed_determines_order(store, data):
    def run(seed, epoch=0):
        return _batches(
            make_loader(
                store, data, batch_size=32, image_size=S, train=True, seed=seed, epoch=epoch
            )
        )

    a = run(1)
    assert _same(a, run(1))
    assert not _same(a, run(2))
    assert not _same(a, run(1, epoch=1))
    loader = make_loader(store, data, batch_size=32, image_size=S, train=True, seed=1)
    loader.sampler.set_epoch(1)
    assert _same(_batches(loader), run(1, epoch=1))


@pytest.mark.parametrize("train", [True, False])
def test_ranks_slice_the_global_batch(store, data, train):
    kw = dict(batch_size=32, image_size=S, train=train, seed=3, drop_last=False)
    full = _batches(make_loader(store, data, **kw))
    parts = [_batches(make_loader(store, data, rank=r, world_size=2, **kw)) for r in (0, 1)]
    assert len(full) == 6 == len(parts[0]) == len(parts[1])  # 171 = 5 * 32 + 11 (6 + 5)
    for k, (images, labels) in enumerate(full):
        assert torch.equal(torch.cat([parts[0][k][0], parts[1][k][0]]), images)
        assert torch.equal(torch.cat([parts[0][k][1], parts[1][k][1]]), labels)
        if k < 5:
            assert len(parts[0][k][1]) == 16
    with pytest.raises(ValueError, match="divisible"):
        make_loader(store, data, batch_size=31, image_size=S, train=True, world_size=2)


def test_skip_batches_resumes(store, data):
    kw = dict(batch_size=32, image_size=S, train=True, seed=5, epoch=2)
    full = _batches(make_loader(store, data, **kw))
    resumed = make_loader(store, data, skip_batches=2, **kw)
    assert len(resumed) == len(full) - 2
    assert _same(_batches(resumed), full[2:])
    resumed.sampler.set_epoch(3)  # the next epoch starts from its beginning
    assert len(resumed) == len(full)


def test_workers_match_main_process(store, data):
    kw = dict(batch_size=32, image_size=S, train=True, seed=7)
    assert _same(
        _batches(make_loader(store, data, workers=2, **kw)),
        _batches(make_loader(store, data, workers=0, **kw)),
    )


def test_balanced_sampling_equalises_classes(data):
    labels = data.labels
    natural = np.bincount(labels, minlength=4)
    assert natural.max() / natural.min() > 8
    counts = np.zeros(4)
    for epoch in range(6):
        sampler = EpochBatchSampler(data, batch_size=32, shuffle=True, balanced=True, epoch=epoch)
        order = sampler.global_order()
        assert len(order) == len(data)
        counts += np.bincount(labels[order], minlength=4)
    assert counts.max() / counts.min() < 1.35
    again = EpochBatchSampler(data, batch_size=32, shuffle=True, balanced=True, epoch=5)
    assert np.array_equal(again.global_order(), order)


@pytest.mark.parametrize("train", [False, True])
def test_every_item_once_per_epoch(data, train):
    for world in (1, 2):
        seen = []
        for rank in range(world):
            sampler = EpochBatchSampler(
                data, batch_size=32, shuffle=train, drop_last=False, rank=rank, world_size=world
            )
            keys = list(sampler)
            assert len(keys) == len(sampler)
            seen += [i for key in keys for i in key.indices.tolist()]
        assert sorted(seen) == list(range(len(data)))
        if not train and world == 1:
            assert seen == list(range(len(data)))


# ------------------------------------------------------------------- memory modes
def test_row_group_mode(store, table, data):
    lazy = ImageTable(store, table, image_size=S, memory_budget=0, cache_groups=2)
    assert data.in_memory and not lazy.in_memory
    assert len(np.unique(lazy.groups)) == 5
    assert all(lazy.image_bytes(i) == data.image_bytes(i) for i in range(0, len(data), 7))
    kw = dict(batch_size=32, image_size=S, train=False, drop_last=False)
    assert _same(_batches(make_loader(store, lazy, **kw)), _batches(make_loader(store, data, **kw)))
    # block shuffle: a window of 2 row groups at a time, items shuffled within it
    sampler = EpochBatchSampler(lazy, batch_size=32, shuffle=True, window_groups=2, seed=1)
    order = sampler.global_order()
    assert sorted(order.tolist()) == list(range(len(lazy)))
    groups = lazy.groups[order]
    spans = sorted(
        (int(pos.min()), int(pos.max()))
        for pos in (np.nonzero(groups == g)[0] for g in np.unique(groups))
    )
    windows = [spans[i : i + 2] for i in range(0, len(spans), 2)]  # 5 groups: 2 + 2 + 1
    end = -1
    for window in windows:  # each window is one contiguous run of the order
        lo, hi = min(s[0] for s in window), max(s[1] for s in window)
        assert lo == end + 1
        end = hi
    assert end == len(order) - 1 and len(windows) == 3
    assert not np.array_equal(np.sort(order[:40]), order[:40])  # shuffled inside windows
    # workers each keep their own cache
    train = dict(batch_size=32, image_size=S, train=True, seed=2)
    assert _same(
        _batches(make_loader(store, lazy, workers=2, **train)),
        _batches(make_loader(store, lazy, **train)),
    )


def test_pickles_without_image_bytes(data):
    blob = pickle.dumps(data)
    assert len(blob) < 50_000  # the ~270 kB of images are reloaded, not shipped
    copy = pickle.loads(blob)
    assert copy.image_bytes(5) == data.image_bytes(5)


def test_unknown_object_id(store):
    bad = pa.table({"object_id": ["0" * 64], "label_index": [0]})
    with pytest.raises(ValueError, match="not in the store"):
        ImageTable(store, bad, image_size=S)


def test_a_corrupt_image_is_skipped_and_named(tmp_path):
    """Bit rot in one stored image: training goes on without it, and the warning names it."""
    import pyarrow.parquet as pq

    from planktonzilla.records import Record

    rng = np.random.default_rng(1)
    s = ObjectStore(tmp_path / "store")
    s.ingest(
        [
            Record(f"{i}.png", _png(rng.integers(0, 255, (20, 20), dtype=np.uint8)))
            for i in range(8)
        ],
        source="rot",
    )
    (shard,) = s.shard_files()
    t = pq.read_table(shard)
    images = t.column("image").to_pylist()
    images[3] = images[3][: len(images[3]) // 2]  # the second half lost
    bad_id = t.column("object_id")[3].as_py()
    pq.write_table(
        t.set_column(t.schema.get_field_index("image"), "image", pa.array(images, pa.binary())),
        shard,
    )
    ids = s.query("SELECT object_id FROM objects ORDER BY object_id")["object_id"]
    view = pa.table({"object_id": ids, "label_index": pa.array([0] * len(ids))})
    loader = make_loader(
        s, ImageTable(s, view, image_size=S), batch_size=8, image_size=S, train=False
    )
    with pytest.warns(UserWarning, match=bad_id):
        ((images_, labels),) = list(loader)
    assert images_.shape[0] == labels.shape[0] == 7
