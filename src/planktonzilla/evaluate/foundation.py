"""Foundation CLIP models (BioCLIP, BioCLIP 2, OpenAI / LAION CLIP, our own CLIP models) loaded
through open_clip from local files only: nothing here ever downloads.

>>> fm = load_open_clip("hf-hub:imageomics/bioclip")
>>> images = torch.stack([fm.transform(png) for png in pngs])   # [B, 3, S, S]
>>> scores = fm.encode_images(images) @ fm.encode_texts(["a photo of Calanus"]).T

Spec forms, and what to do once on a machine with internet to use each offline:

1. ``hf-hub:ORG/NAME`` (``hf-hub:imageomics/bioclip``, ``hf-hub:imageomics/bioclip-2``): read
   from the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``). Preparation::

       hf download imageomics/bioclip --include "open_clip_*"
       # (huggingface_hub < 1.0: huggingface-cli download imageomics/bioclip --include ...)

   then copy the cache folder ``models--imageomics--bioclip`` into the offline machine's hub
   cache, or copy the whole cache and point ``HF_HOME`` / ``HF_HUB_CACHE`` at it.
2. A directory, or ``local-dir:PATH``: ``open_clip_config.json`` (``model_cfg`` +
   ``preprocess_cfg``) and ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``).
   Our planktonzilla CLIP model directories hold exactly these, so they load as they are.
   Preparation: ``hf download imageomics/bioclip --include "open_clip_*" --local-dir bioclip``
   and copy the folder.
3. ``ARCH:CHECKPOINT``: a local checkpoint file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``;
   an open_clip state dict, possibly ``{"state_dict": ...}`` with ``module.`` prefixes as
   open_clip training saves it) for ARCH, an open_clip model name (``open_clip.list_models()``)
   or the path of a model config JSON (a bare open_clip model config, or an
   ``open_clip_config.json`` whose ``preprocess_cfg`` is then used too). Preparation: copy the
   file.
4. ``ARCH:TAG`` (``ViT-B-32:laion2b_s34b_b79k``, ``ViT-B-32:openai``): a tag of open_clip's
   pretrained registry (``open_clip.list_pretrained()``), read from the Hugging Face cache as in
   1. Preparation: ``python -c "import open_clip; open_clip.create_model('ViT-B-32',
   pretrained='laion2b_s34b_b79k')"`` fills the cache; copy it as in 1. Tags trained with
   QuickGELU (``openai``) get it whatever the architecture config says.

Nothing is unpickled beyond tensors: safetensors first, ``torch.load(weights_only=True)``
otherwise. `FoundationModel.identity` hashes the loaded weights, the model config and the
preprocessing: the same weights under the same configs give the same identity in every form.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

__all__ = ["FoundationModel", "decode_rgb", "hub_cache_dir", "load_open_clip"]

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_NAME = "open_clip_config.json"
#: Weights files of a hub-style directory, safest first.
WEIGHTS_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class FoundationModel:
    """A loaded open_clip model with its eval transform and tokenizer; see `load_open_clip`."""

    def __init__(
        self,
        *,
        name: str,
        spec: str,
        identity: str,
        model: torch.nn.Module,
        preprocess,
        tokenizer,
        image_size: int,
        embed_dim: int,
        checkpoint: Path,
    ):
        self.name = name
        self.spec = spec
        self.identity = identity
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.embed_dim = embed_dim
        self.checkpoint = checkpoint  # the weights file read (provenance for reports)
        self.logit_scale = float(model.logit_scale.detach().float().exp().item())
        self.device = next(model.parameters()).device

    def __repr__(self) -> str:
        return (
            f"FoundationModel({self.name!r}, image_size={self.image_size}, "
            f"embed_dim={self.embed_dim}, identity={self.identity[:12]}…)"
        )

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``[B, 3, S, S]`` → L2-normalised float32 features ``[B, D]``."""
        features = self.model.encode_image(x.to(self.device, torch.float32))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Texts → L2-normalised float32 features ``[T, D]``."""
        chunks = [
            self.model.encode_text(self.tokenizer(list(texts[i : i + batch_size])).to(self.device))
            for i in range(0, len(texts), batch_size)
        ]
        if not chunks:
            return torch.empty(0, self.embed_dim, device=self.device)
        return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)

    def transform(self, image_bytes: bytes) -> torch.Tensor:
        """Encoded image → ``[3, S, S]`` float tensor through the model's own preprocessing."""
        return self.preprocess(decode_rgb(image_bytes))


def decode_rgb(image_bytes: bytes):
    """Encoded image → 8-bit RGB PIL image. 16/32-bit greyscale is scaled by its maximum (as
    the training loader does), palette and grey images are expanded."""
    import numpy as np
    from PIL import Image

    im = Image.open(io.BytesIO(image_bytes))
    im.load()
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        if hi > 255:
            a = a * (255.0 / hi)
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def load_open_clip(
    spec: str | os.PathLike, *, device: str | torch.device = "cpu", image_size: int | None = None
) -> FoundationModel:
    """Load a CLIP model from local files (see the module docstring for the spec forms).
    ``image_size`` overrides the model's input size (position embeddings are resampled).

    Raises FileNotFoundError (with the steps to fetch the model on a connected machine) when
    the files are not here, ValueError when the spec or the files are not usable."""
    source = _resolve(str(spec))
    model, model_cfg, preprocess_cfg = _build(source, image_size)
    identity = _identity(model, model_cfg, preprocess_cfg)
    model = model.to(device).eval()

    from open_clip.transform import PreprocessCfg, image_transform_v2

    size = preprocess_cfg["size"]
    return FoundationModel(
        name=source["name"],
        spec=str(spec),
        identity=identity,
        model=model,
        preprocess=image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False),
        tokenizer=_tokenizer(source, model_cfg),
        image_size=int(size if isinstance(size, int) else max(size)),
        embed_dim=int(model_cfg["embed_dim"]),
        checkpoint=source["checkpoint"],
    )


# ---------------------------------------------------------------- resolving a spec to files


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time (huggingface_hub reads it
    once at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _cached(repo_id: str, filename: str) -> Path | None:
    """A file of a hub repo from the local cache only (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache_dir()))
    return Path(path) if isinstance(path, str) and os.path.isfile(path) else None


def _resolve(spec: str) -> dict[str, Any]:
    """Spec → {name, model_cfg, preprocess_cfg, checkpoint, dir (tokenizer files), arch}."""
    if spec.startswith(HF_HUB_PREFIX):
        return _resolve_hub(spec.removeprefix(HF_HUB_PREFIX))
    if spec.startswith(LOCAL_DIR_PREFIX):
        return _resolve_dir(Path(spec.removeprefix(LOCAL_DIR_PREFIX)).expanduser())
    path = Path(spec).expanduser()
    if path.is_dir():
        return _resolve_dir(path)
    arch, sep, rest = spec.partition(":")
    if sep and arch and rest:
        if Path(rest).expanduser().is_file() or rest.lower().endswith(CHECKPOINT_SUFFIXES):
            return _resolve_checkpoint(arch, Path(rest).expanduser())
        if "/" not in rest and os.sep not in rest:
            return _resolve_tag(arch, rest)
        raise FileNotFoundError(f"checkpoint file not found: {rest}")
    if path.suffix or os.sep in spec or "/" in spec:
        raise FileNotFoundError(f"no such model directory: {spec}")
    raise ValueError(
        f"cannot read model spec {spec!r}: expected hf-hub:ORG/NAME, a directory (or "
        "local-dir:PATH), ARCH:CHECKPOINT_FILE or ARCH:PRETRAINED_TAG (e.g. ViT-B-32:openai)"
    )


def _hub_fetch_hint(repo_id: str) -> str:
    return (
        f"On a machine with internet run\n"
        f'    hf download {repo_id} --include "open_clip_*"\n'
        f"(older huggingface_hub: huggingface-cli download {repo_id} ...), then copy its "
        f"cache folder models--{repo_id.replace('/', '--')} into {hub_cache_dir()} here, or "
        "copy the whole cache and set HF_HOME / HF_HUB_CACHE to it. Or download with "
        "--local-dir DIR and load the directory DIR."
    )


def _resolve_hub(repo_id: str) -> dict[str, Any]:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"hf-hub spec needs ORG/NAME, got {repo_id!r}")
    config = _cached(repo_id, CONFIG_NAME)
    weights = next(filter(None, (_cached(repo_id, n) for n in WEIGHTS_NAMES)), None)
    if config is None or weights is None:
        missing = CONFIG_NAME if config is None else " or ".join(WEIGHTS_NAMES[::2])
        raise FileNotFoundError(
            f"hf-hub:{repo_id} is not in the local Hugging Face cache {hub_cache_dir()} "
            f"(missing {missing}); planktonzilla never downloads models.\n"
            + _hub_fetch_hint(repo_id)
        )
    source = _read_hub_config(config)
    return {**source, "name": repo_id.split("/")[1], "checkpoint": weights, "dir": config.parent}


def _read_hub_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable open_clip config ({exc})") from exc
    model_cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(
        model_cfg
    ):
        raise ValueError(f"{path}: no open_clip model config (embed_dim, vision_cfg, text_cfg)")
    return {"model_cfg": model_cfg, "preprocess_cfg": cfg.get("preprocess_cfg", {}), "arch": ""}


def _resolve_dir(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"no such model directory: {directory}")
    config = directory / CONFIG_NAME
    if not config.is_file():
        hint = ""
        if (directory / "config.json").is_file():
            hint = (
                " (a planktonzilla model directory without a CLIP export: supervised models "
                "load with planktonzilla.models.load_model)"
            )
        raise FileNotFoundError(f"{directory}: no {CONFIG_NAME}{hint}")
    weights = next((directory / n for n in WEIGHTS_NAMES if (directory / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(
            f"{directory}: no open_clip weights (expected one of {', '.join(WEIGHTS_NAMES)})"
        )
    name = directory.resolve().name
    return {**_read_hub_config(config), "name": name, "checkpoint": weights, "dir": directory}


def _arch_config(arch: str) -> dict[str, Any]:
    """An open_clip model name, or the path of a model config JSON."""
    if arch.lower().endswith(".json"):
        path = Path(arch).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        return {**_read_hub_config(path), "arch": path.stem}
    import open_clip
    from open_clip.factory import get_model_config

    name = arch.replace("/", "-")  # open_clip's own spelling of ViT-B/32
    model_cfg = get_model_config(name)
    if model_cfg is None:
        raise ValueError(
            f"unknown open_clip architecture {arch!r} (see open_clip.list_models(), "
            f"{len(open_clip.list_models())} known; or give a model config .json path)"
        )
    return {"model_cfg": model_cfg, "preprocess_cfg": {}, "arch": name}


def _resolve_checkpoint(arch: str, checkpoint: Path) -> dict[str, Any]:
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
    source = _arch_config(arch)
    name = f"{source['arch']}/{checkpoint.stem}"
    return {**source, "name": name, "checkpoint": checkpoint, "dir": None}


def _resolve_tag(arch: str, tag: str) -> dict[str, Any]:
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    source = _arch_config(arch)
    arch = source["arch"]
    tag_cfg = get_pretrained_cfg(arch, tag)
    if not tag_cfg:
        tags = ", ".join(list_pretrained_tags_by_model(arch)) or "none"
        raise ValueError(f"{arch!r} has no pretrained tag {tag!r} (tags: {tags})")
    if tag_cfg.get("file"):
        checkpoint = Path(tag_cfg["file"])
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{arch}:{tag}: checkpoint file not found: {checkpoint}")
    elif not tag_cfg.get("hf_hub"):
        raise ValueError(f"{arch}:{tag} has no Hugging Face source; give ARCH:CHECKPOINT_FILE")
    else:
        repo_id, filename = _split_hub_entry(tag_cfg["hf_hub"])
        names = (*_safetensors_twins(filename), filename)
        checkpoint = next(filter(None, (_cached(repo_id, n) for n in names)), None)
        if checkpoint is None:
            raise FileNotFoundError(
                f"{arch}:{tag} is not in the local Hugging Face cache {hub_cache_dir()} "
                f"({repo_id}/{filename}); planktonzilla never downloads models.\n"
                "On a machine with internet run\n"
                f"    python -c \"import open_clip; open_clip.create_model('{arch}', "
                f"pretrained='{tag}')\"\n"
                f"(or: hf download {repo_id} {filename}), then copy its cache folder "
                f"models--{repo_id.replace('/', '--')} into {hub_cache_dir()} here, or copy "
                "the whole cache and set HF_HOME / HF_HUB_CACHE to it."
            )
    model_cfg = copy.deepcopy(source["model_cfg"])
    if tag_cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # the weights were trained with it
    return {
        "model_cfg": model_cfg,
        "preprocess_cfg": tag_cfg,
        "arch": arch,
        "name": f"{arch}/{tag}",
        "checkpoint": checkpoint,
        "dir": None,
    }


def _split_hub_entry(entry: str) -> tuple[str, str]:
    """open_clip's ``hf_hub`` entries: ``org/repo/`` (default file) or ``org/repo/file``."""
    repo_id, filename = os.path.split(entry)
    return repo_id, filename or "open_clip_pytorch_model.bin"


def _safetensors_twins(filename: str) -> tuple[str, ...]:
    """The safetensors file open_clip prefers to a pickled one of a hub repo."""
    if filename == "open_clip_pytorch_model.bin":
        return ("open_clip_model.safetensors",)
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors",)
    return ()


# ---------------------------------------------------------------- building the model


@contextlib.contextmanager
def _offline():
    """No network for anything open_clip calls (HF tokenizers, text towers): the hub libraries
    read these switches, huggingface_hub's at import, hence the constant too."""
    import huggingface_hub.constants as hub_constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    saved_constant = hub_constants.HF_HUB_OFFLINE
    os.environ.update(dict.fromkeys(names, "1"))
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_constant
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file; pickles are read with ``weights_only=True``."""
    from open_clip.factory import load_state_dict

    try:
        state = load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as exc:  # safetensors, zip and unpickling errors alike
        raise ValueError(
            f"{path}: not a readable tensor checkpoint (safetensors or a weights-only torch "
            f"state dict; code is never unpickled): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: no state dict in the checkpoint")
    return state


def _build(source: dict[str, Any], image_size: int | None):
    """(CPU model with the weights loaded, effective model cfg, effective preprocess cfg)."""
    from open_clip.coca_model import CoCa
    from open_clip.factory import load_checkpoint
    from open_clip.model import CLIP, CustomTextCLIP, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    model_cfg = copy.deepcopy(source["model_cfg"])
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    if image_size is not None:
        vision["image_size"] = int(image_size)
    timm_tower = "timm_model_name" in vision
    if timm_tower:
        vision["timm_model_pretrained"] = False  # the checkpoint has every weight
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    # the model classes open_clip.create_model picks for a config
    cfg = copy.deepcopy(model_cfg)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text
    cls = (CoCa if "multimodal_cfg" in cfg else CustomTextCLIP) if custom_text else CLIP
    checkpoint = Path(source["checkpoint"])
    with _offline():
        model = cls(**cfg)
    try:
        load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
    except Exception as exc:
        _read_checkpoint(checkpoint)  # raises its own error when the file is unreadable
        head = str(exc).strip().splitlines()[:4]
        raise ValueError(
            f"{checkpoint} does not fit the model config of {source['name']!r}: " + " ".join(head)
        ) from exc
    if timm_tower and hasattr(model.visual, "set_input_size"):
        # open_clip builds timm trunks at their default size; resize to the configured one
        model.visual.set_input_size(vision.get("image_size", 224))
    preprocess_cfg = merge_preprocess_dict(asdict(PreprocessCfg()), source["preprocess_cfg"])
    size = getattr(model.visual, "image_size", preprocess_cfg["size"])
    if isinstance(size, (tuple, list)):
        size = int(size[0]) if len(set(size)) == 1 else [int(s) for s in size]
    preprocess_cfg["size"] = size
    preprocess_cfg["mean"] = [float(m) for m in preprocess_cfg["mean"]]
    preprocess_cfg["std"] = [float(s) for s in preprocess_cfg["std"]]
    set_model_preprocess_cfg(model, preprocess_cfg)
    return model.eval(), model_cfg, preprocess_cfg


def _identity(
    model: torch.nn.Module, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any]
) -> str:
    """sha256 of the configs and of every tensor of the loaded model (name, dtype, shape,
    bytes): independent of the file format, key prefixes and file names."""
    digest = hashlib.sha256()
    configs = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    digest.update(json.dumps(configs, sort_keys=True, default=list).encode())
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"\n{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tokenizer(source: dict[str, Any], model_cfg: dict[str, Any]):
    """open_clip.get_tokenizer's choice for this config, from local files only."""
    from open_clip.tokenizer import (
        DEFAULT_CONTEXT_LENGTH,
        HFTokenizer,
        SigLipTokenizer,
        SimpleTokenizer,
    )

    text = model_cfg.get("text_cfg", {})
    context_length = text.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text.get("tokenizer_kwargs", {}))
    with _offline():
        if text.get("hf_tokenizer_name"):
            local = source.get("dir")
            has_files = local is not None and any(
                (Path(local) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
            )
            return HFTokenizer(
                str(local) if has_files else text["hf_tokenizer_name"],
                context_length=context_length,
                cache_dir=str(hub_cache_dir()),
                tokenizer_mode=text.get("tokenizer_mode"),
                **kwargs,
            )
        arch = source.get("arch", "").lower()
        if "siglip" in arch:
            variant = "gemma" if "siglip2" in arch else "mc4" if "i18n" in arch else "c4-en"
            return SigLipTokenizer(variant, context_length=context_length)
        return SimpleTokenizer(context_length=context_length, **kwargs)
