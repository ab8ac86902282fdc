"""The image contract: how encoded image bytes become a model's input, the same everywhere.

A `PreprocessConfig` travels inside every model directory (`config.json`, key `preprocess`) and
is applied identically by training (its un-augmented path), evaluation, prediction, the web
app and the open_clip export:

    cfg = PreprocessConfig(size=64, mean=(0.5,) * 3, std=(0.5,) * 3, fill=235)
    pixels = cfg(image_bytes)                  # uint8 [64, 64, 3]
    x = cfg.normalize(torch.from_numpy(pixels).permute(2, 0, 1))

Geometry. Decode (Pillow; a greyscale image stays one channel until the end), resize so the
longest side is `size` (aspect kept, `interpolation`), and pad the short side to a square,
centred, with `fill`. Those are exactly open_clip's `resize_mode="longest"` steps
(`ResizeKeepRatio(longest=1)` then `CenterCropOrPad(fill=fill_color)`), so an exported model's
own open_clip transform gives the same tensor as ours whenever `fill` is a level (0-255).

Fill. A level, or `"border"`: each image's own background, the median of its 1-px border
(per channel). Training's default, `"auto"`, is resolved before the model is built to one level
estimated from the training images (`estimate_fill`), so the contract open_clip can express
is the one models get unless asked otherwise.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "INTERPOLATIONS",
    "PreprocessConfig",
    "border_fill",
    "decode",
    "estimate_fill",
    "normalize",
]

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
#: timm's ImageNet normalisation, the default of a config built without a backbone's own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------ decoding
def _to_l_or_rgb(im: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """One-channel ("L") or three-channel ("RGB") 8-bit image and its pixels; RGB whose
    channels are all equal (greyscale saved as colour, common for plankton) becomes "L"."""
    mode = im.mode
    if mode in ("1", "LA", "La"):
        im = im.convert("L")
    elif mode.startswith("I") or mode == "F":  # 16-bit / 32-bit greyscale: scale by the max
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        if hi > 255:
            a = a * (255.0 / hi)
        a = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L"), a
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.ndim == 3:
        g = a[:, :, 0]
        if np.array_equal(g, a[:, :, 1]) and np.array_equal(g, a[:, :, 2]):
            a = np.ascontiguousarray(g)
            im = Image.fromarray(a, "L")
    return im, a


def decode(data: bytes, draft_side: int | None = None) -> tuple[Image.Image, np.ndarray]:
    """Decode to "L" or "RGB". With `draft_side`, JPEGs at least twice that size are decoded
    at a reduced scale (training only: the contract's path decodes in full)."""
    im = Image.open(io.BytesIO(data))
    if draft_side and im.format == "JPEG":
        w, h = im.size
        big = max(w, h)
        if big >= 2 * draft_side:
            f = draft_side / big
            im.draft("L" if im.mode == "L" else "RGB", (math.ceil(w * f), math.ceil(h * f)))
    im.load()
    return _to_l_or_rgb(im)


def border_fill(a: np.ndarray) -> int | tuple[int, ...]:
    """Background estimate: the per-channel median of the 1-px border."""
    if a.shape[0] < 3 or a.shape[1] < 3:
        border = a.reshape(-1, *a.shape[2:])
    else:
        border = np.concatenate((a[0], a[-1], a[1:-1, 0], a[1:-1, -1]))
    med = np.median(border, axis=0)
    if np.ndim(med) == 0:
        return int(round(float(med)))
    return tuple(int(round(float(v))) for v in med)


def fill_for_mode(fill, mode: str, im: Image.Image) -> tuple[Image.Image, Any]:
    """`fill` in the form Pillow wants for `im`'s mode (a colour fill turns "L" into "RGB")."""
    if mode == "L" and not np.isscalar(fill):
        fill = tuple(int(v) for v in fill)
        if len(set(fill)) == 1:
            return im, fill[0]
        return im.convert("RGB"), fill
    if mode == "RGB" and np.isscalar(fill):
        return im, (int(fill),) * 3
    return im, fill


def estimate_fill(images: Iterable[bytes]) -> int:
    """One background level for a set of images: the median of their border levels (each
    image's border median, averaged over channels). Unreadable images are skipped."""
    levels = []
    for data in images:
        try:
            _, a = decode(data)
        except Exception:  # noqa: BLE001 - a bad image says nothing about the background
            continue
        levels.append(float(np.mean(border_fill(a))))
    return int(round(float(np.median(levels)))) if levels else 0


# ------------------------------------------------------------------------ contract
@dataclass(frozen=True)
class PreprocessConfig:
    """How a model sees an image. `fill` is a level 0-255 or "border" (see the module doc)."""

    size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    fill: int | str = "border"
    interpolation: str = "bilinear"

    def __post_init__(self):
        if int(self.size) < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.interpolation not in INTERPOLATIONS:
            known = ", ".join(INTERPOLATIONS)
            raise ValueError(f"interpolation must be one of {known}, got {self.interpolation!r}")
        if self.fill != "border" and not (
            isinstance(self.fill, int) and not isinstance(self.fill, bool) and 0 <= self.fill <= 255
        ):
            raise ValueError(f"fill must be a level 0-255 or 'border', got {self.fill!r}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    # -- (de)serialisation: the `preprocess` section of a model's config.json
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        known = {"size", "mean", "std", "fill", "interpolation"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocess setting(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def of_model(cls, config: dict[str, Any]) -> PreprocessConfig:
        """The contract of a model config (`config["preprocess"]`)."""
        return cls.from_dict(config["preprocess"])

    @property
    def exact_in_open_clip(self) -> bool:
        """Whether open_clip's own transform reproduces this contract (a fixed fill)."""
        return self.fill != "border"

    def open_clip_cfg(self) -> dict[str, Any]:
        """open_clip's `preprocess_cfg` for this contract (`resize_mode="longest"`). A "border"
        fill has no open_clip equivalent: black (0) stands in for it."""
        return {
            "size": self.size,
            "mode": "RGB",
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": "longest",
            "fill_color": 0 if self.fill == "border" else int(self.fill),
        }

    # -- pixels
    def render(self, im: Image.Image, pixels: np.ndarray) -> np.ndarray:
        """A decoded image ("L" or "RGB") -> uint8 [size, size] or [size, size, 3]."""
        s = self.size
        fill = border_fill(pixels) if self.fill == "border" else self.fill
        w, h = im.size
        ratio = max(w / s, h / s)  # open_clip's ResizeKeepRatio(longest=1) arithmetic
        nw, nh = round(w / ratio), round(h / ratio)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), INTERPOLATIONS[self.interpolation])
        if (nw, nh) != (s, s):
            im, fill = fill_for_mode(fill, im.mode, im)
            canvas = Image.new(im.mode, (s, s), fill)
            canvas.paste(im, ((s - nw) // 2, (s - nh) // 2))  # CenterCropOrPad's offsets
            im = canvas
        return np.asarray(im)

    def __call__(self, image_bytes: bytes) -> np.ndarray:
        """Encoded image -> uint8 [size, size, 3] (RGB)."""
        a = self.render(*decode(image_bytes))
        if a.ndim == 2:
            return np.repeat(a[:, :, None], 3, axis=2)
        return a if a.flags.writeable else a.copy()

    def normalize(self, images, *, dtype=None):
        """uint8 [B, 3, H, W] (or [3, H, W]) tensor -> (x/255 - mean) / std, computed in
        float32 on the images' device (cast to `dtype` at the end)."""
        return normalize(images, self.mean, self.std, dtype=dtype)


def normalize(images, mean: Sequence[float], std: Sequence[float], *, dtype=None):
    """uint8 [B, 3, H, W] (or [3, H, W]) -> `dtype` (x/255 - mean) / std on the images'
    device; mean and std in 0-1 units (timm's data config). Computed in float32."""
    import torch

    device = images.device
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    x = images.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    x = x.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)
    return x if dtype in (None, torch.float32) else x.to(dtype)
