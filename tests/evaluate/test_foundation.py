"""Loading CLIP models offline: tiny random open_clip models saved in every real on-disk form
(open_clip training checkpoint, safetensors, hub-style directory, Hugging Face cache layout),
and a planktonzilla CLIP model directory. No test touches the network."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from safetensors.torch import save_file

from planktonzilla.evaluate.foundation import load_open_clip
from planktonzilla.models import build_model, save_model

ARCH = "pz-test-tinyclip"
MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
PREPROCESS = {
    "size": 32,
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.25, 0.3],
    "interpolation": "bilinear",
    "resize_mode": "squash",
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
REPO = "testorg/tinyclip"
REVISION = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a diatom", "Calanus finmarchicus, a copepod", "detritus", ""]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Name lookups and connections are recorded and refused; each test asserts there was none."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"network access in a test: {address}")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise OSError(f"name lookup in a test: {host}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    yield
    assert not attempts, f"tried to connect to {attempts}"


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """Point every cache at an empty folder, so a real ~/.cache cannot make a test pass."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))


def _hf_cache(hub: Path, config: dict, weights: Path) -> None:
    """The Hugging Face cache layout: blobs by hash, snapshot symlinks, refs/main."""
    repo = hub / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in (
        ("open_clip_config.json", json.dumps(config).encode()),
        ("open_clip_model.safetensors", weights.read_bytes()),
    ):
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Two tiny random CLIPs (seeds 0 and 1) saved in every form, and reference features."""
    root = tmp_path_factory.mktemp("foundation")
    (root / "arch").mkdir()
    (root / "arch" / f"{ARCH}.json").write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(root / "arch")

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**MODEL_CFG).eval()
    torch.manual_seed(1)
    other = open_clip.model.CLIP(**MODEL_CFG).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    # (a) as open_clip training writes it, and as plain safetensors
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               root / "epoch_3.pt")  # fmt: skip
    save_file(state, str(root / "tiny.safetensors"))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(root / "other.st"))
    (root / "other.st").rename(root / "other.safetensors")
    # (b) hub-style directories, safetensors and pickled weights
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS}
    hub_dir, bin_dir = root / "tinyclip", root / "tinyclip-bin"
    for d in (hub_dir, bin_dir):
        d.mkdir()
        (d / "open_clip_config.json").write_text(json.dumps(config))
    save_file(state, str(hub_dir / "open_clip_model.safetensors"))
    torch.save(state, bin_dir / "open_clip_pytorch_model.bin")
    # (c) a Hugging Face cache
    _hf_cache(root / "hf-home" / "hub", config, hub_dir / "open_clip_model.safetensors")

    torch.manual_seed(2)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref_images = F.normalize(model.encode_image(images), dim=-1)
        tokens = SimpleTokenizer(context_length=16)(TEXTS)
        ref_texts = F.normalize(model.encode_text(tokens), dim=-1)
    return SimpleNamespace(
        root=root,
        model=model,
        hub_dir=hub_dir,
        bin_dir=bin_dir,
        hf_home=root / "hf-home",
        images=images,
        ref_images=ref_images,
        ref_texts=ref_texts,
    )


def _spec(tiny, form: str) -> str:
    root = tiny.root
    return {
        "arch:pt": f"{ARCH}:{root / 'epoch_3.pt'}",
        "arch:safetensors": f"{ARCH}:{root / 'tiny.safetensors'}",
        "config-json:pt": f"{tiny.hub_dir / 'open_clip_config.json'}:{root / 'epoch_3.pt'}",
        "dir": str(tiny.hub_dir),
        "local-dir": f"local-dir:{tiny.hub_dir}",
        "dir-bin": str(tiny.bin_dir),
        "hf-hub": f"hf-hub:{REPO}",
    }[form]


FORMS = ["arch:pt", "arch:safetensors", "config-json:pt", "dir", "local-dir", "dir-bin", "hf-hub"]


@pytest.fixture(scope="session")
def loaded(tiny):
    """The tiny model loaded once per form (loads are the slow part of these tests)."""
    models = {}

    def load(form):
        if form not in models:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("HF_HUB_CACHE", str(tiny.hf_home / "hub"))  # for hf-hub:
                models[form] = load_open_clip(_spec(tiny, form))
        return models[form]

    return load


@pytest.mark.parametrize("form", FORMS)
def test_every_form_gives_the_original_features(tiny, loaded, form):
    fm = loaded(form)
    assert fm.spec == _spec(tiny, form)
    assert fm.image_size == 32 and not fm.model.training
    images = fm.encode_images(tiny.images)
    texts = fm.encode_texts(TEXTS, batch_size=3)  # two batches
    assert images.dtype == texts.dtype == torch.float32
    assert images.shape == (5, 32) and texts.shape == (4, 32)
    torch.testing.assert_close(images, tiny.ref_images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(texts, tiny.ref_texts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(5))
    assert fm.logit_scale == pytest.approx(tiny.model.logit_scale.exp().item())
    assert fm.encode_texts([]).shape == (0, 32)


def test_names(loaded):
    assert loaded("hf-hub").name == "tinyclip"
    assert loaded("dir").name == "tinyclip"
    assert loaded("arch:pt").name == f"{ARCH}/epoch_3"
    assert loaded("config-json:pt").name == "open_clip_config/epoch_3"


def test_identity_follows_weights_and_configs_not_file_format(tiny, loaded):
    def identity(form):
        return loaded(form).identity

    registered = identity("arch:pt")
    assert len(registered) == 64 and int(registered, 16) >= 0
    fresh = load_open_clip(_spec(tiny, "arch:pt"))
    assert fresh.identity == registered and fresh is not loaded("arch:pt")  # stable
    assert identity("arch:safetensors") == registered  # pickled + "module." vs safetensors
    # the same weights with the saved preprocess_cfg, in four forms
    saved = {identity(f) for f in ("config-json:pt", "dir", "dir-bin", "hf-hub")}
    assert len(saved) == 1
    # preprocessing changes the features of an image, so it is part of the identity
    assert saved != {registered}
    assert load_open_clip(f"{ARCH}:{tiny.root / 'other.safetensors'}").identity != registered
    resized = load_open_clip(str(tiny.hub_dir), image_size=48)
    assert resized.identity not in saved | {registered}


def _normalize_step(fm):
    return next(t for t in fm.preprocess.transforms if type(t).__name__ == "Normalize")


def _png(a: np.ndarray, mode: str | None = None, **info) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(a, mode) if mode else Image.fromarray(a)
    im.save(buf, format="PNG", **info)
    return buf.getvalue()


def test_preprocess_comes_from_the_saved_config(loaded):
    fm = loaded("hf-hub")
    norm = _normalize_step(fm)
    assert list(norm.mean) == PREPROCESS["mean"] and list(norm.std) == PREPROCESS["std"]
    # squash: a 70x20 image fills the whole 32x32 input, a constant level stays constant
    x = fm.transform(_png(np.full((20, 70, 3), 200, np.uint8)))
    expected = (200 / 255 - torch.tensor(PREPROCESS["mean"])) / torch.tensor(PREPROCESS["std"])
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x, expected.view(3, 1, 1).expand(3, 32, 32), atol=1e-5, rtol=0)
    # the architecture alone gets open_clip's defaults (OpenAI statistics)
    assert tuple(_normalize_step(loaded("arch:pt")).mean) == pytest.approx(OPENAI_MEAN)


def test_transform_decodes_plankton_images(loaded, shared_data):
    fm = loaded("dir")
    mean, std = torch.tensor(PREPROCESS["mean"]), torch.tensor(PREPROCESS["std"])
    # a real greyscale ISIIS vignette: RGB with three equal channels before normalisation
    jpg = next((shared_data / "isiis_ndsb" / "copepod_calanoid").glob("*.jpg")).read_bytes()
    x = fm.transform(jpg)
    assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
    raw = x * std.view(3, 1, 1) + mean.view(3, 1, 1)
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
    # 16-bit greyscale is scaled by its maximum: the brightest pixel becomes 255
    a16 = np.full((32, 32), 1000, np.uint16)
    a16[:16] = 4000
    x = fm.transform(_png(a16))
    top = (1.0 - mean) / std
    torch.testing.assert_close(x[:, 0, 0], top, atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, -1, -1], (63 / 255 - mean) / std, atol=1e-5, rtol=0)
    # a palette image is expanded to its colours
    pal = Image.fromarray(np.zeros((32, 32), np.uint8), "P")
    pal.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    x = fm.transform(buf.getvalue())
    torch.testing.assert_close(x[:, 5, 5], (torch.tensor([1.0, 0, 0]) - mean) / std)


def test_registry_tag_resolves_from_the_hub_cache(tiny, monkeypatch):
    import open_clip.pretrained as pretrained

    tags = {
        "pztest": {"hf_hub": f"{REPO}/", "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5)},
        "pztest_qg": {"hf_hub": f"{REPO}/", "quick_gelu": True},
    }
    monkeypatch.setitem(pretrained._PRETRAINED, ARCH, tags)
    monkeypatch.setenv("HF_HOME", str(tiny.hf_home))  # HF_HOME/hub is the cache
    fm = load_open_clip(f"{ARCH}:pztest")
    assert fm.name == f"{ARCH}/pztest"
    assert fm.checkpoint.name == "open_clip_model.safetensors"  # preferred to the .bin
    torch.testing.assert_close(fm.encode_images(tiny.images), tiny.ref_images)
    assert tuple(_normalize_step(fm).mean) == (0.1, 0.2, 0.3)
    # weights trained with QuickGELU get it, whatever the architecture config says
    qg = load_open_clip(f"{ARCH}:pztest_qg")
    assert type(qg.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(fm.model.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("hf-hub:imageomics/bioclip", 'hf download imageomics/bioclip --include "open_clip_*"'),
        ("hf-hub:imageomics/bioclip-2", "models--imageomics--bioclip-2"),
        ("ViT-B-32:laion2b_s34b_b79k", "pretrained='laion2b_s34b_b79k'"),
        ("ViT-B-32:openai", "create_model('ViT-B-32', pretrained='openai')"),
    ],
)
def test_uncached_models_fail_fast_with_fetch_steps(spec, hint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing-here"))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        load_open_clip(spec)
    assert time.perf_counter() - start < 2
    message = str(err.value)
    assert hint in message and "never downloads" in message
    assert str(tmp_path / "nothing-here") in message  # says where it looked


def test_bad_paths_and_checkpoints_give_clear_errors(tiny, tmp_path):
    root = tiny.root
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_open_clip(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_open_clip(f"local-dir:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json"):
        load_open_clip(str(tmp_path))
    empty = tmp_path / "config-only"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG}))
    with pytest.raises(FileNotFoundError, match="no open_clip weights"):
        load_open_clip(str(empty))
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_open_clip(f"{ARCH}:{tmp_path / 'nope.pt'}")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_open_clip(f"NoSuchArch-B-99:{root / 'tiny.safetensors'}")
    with pytest.raises(ValueError, match="no pretrained tag 'nosuchtag'.*laion2b_s34b_b79k"):
        load_open_clip("ViT-B-32:nosuchtag")
    with pytest.raises(ValueError, match="cannot read model spec"):
        load_open_clip("bioclip")
    with pytest.raises(ValueError, match="ORG/NAME"):
        load_open_clip("hf-hub:bioclip")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="not a readable tensor checkpoint"):
        load_open_clip(f"{ARCH}:{garbage}")
    garbage_st = tmp_path / "garbage.safetensors"
    garbage_st.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable tensor checkpoint"):
        load_open_clip(f"{ARCH}:{garbage_st}")
    # a pickle that would run code on load (a class instance) is refused
    code = tmp_path / "code.pt"
    torch.save({"state_dict": SimpleNamespace(evil=True)}, code)
    with pytest.raises(ValueError, match="never unpickled"):
        load_open_clip(f"{ARCH}:{code}")
    # weights of another architecture
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({**MODEL_CFG, "embed_dim": 16}))
    with pytest.raises(ValueError, match="does not fit the model config"):
        load_open_clip(f"{wide}:{root / 'tiny.safetensors'}")


def test_supervised_planktonzilla_directory_is_pointed_to_load_model(tmp_path):
    model = build_model({"kind": "supervised", "backbone": "vit_tiny", "image_size": 32,
                         "classes": ["a", "b"]})  # fmt: skip
    save_model(model, tmp_path / "sup")
    with pytest.raises(FileNotFoundError, match="load_model"):
        load_open_clip(str(tmp_path / "sup"))


def test_planktonzilla_clip_directory(tmp_path):
    torch.manual_seed(0)
    config = {
        "kind": "clip",
        "backbone": "vit_tiny",
        "image_size": 32,
        "classes": ["a", "b"],
        "embed_dim": 32,
        "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16},
    }
    model = build_model(config).eval()
    save_model(model, tmp_path / "pz-clip")
    fm = load_open_clip(str(tmp_path / "pz-clip"))
    assert fm.name == "pz-clip" and fm.image_size == 32

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        expected = model.encode_image(model.normalize(images))
        expected_text = model.encode_text(model.tokenize(TEXTS))
    torch.testing.assert_close(fm.encode_images(model.normalize(images)), expected, atol=1e-5,
                               rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(fm.encode_texts(TEXTS), expected_text, atol=1e-5, rtol=1e-4)
    # its preprocessing is the model's own: a 32 px image gives exactly model.normalize
    png = _png(images[0].permute(1, 2, 0).numpy())
    torch.testing.assert_close(fm.transform(png), model.normalize(images[:1])[0], atol=1e-5,
                               rtol=0)  # fmt: skip


def test_image_size_override(tiny):
    fm = load_open_clip(str(tiny.hub_dir), image_size=48)
    assert fm.image_size == 48
    x = fm.transform(_png(np.zeros((10, 10, 3), np.uint8)))
    assert x.shape == (3, 48, 48)
    assert fm.encode_images(x[None]).shape == (1, 32)
