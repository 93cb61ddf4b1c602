"""LR images for the example model: a Real-ESRGAN-style first-order chain ("real") or plain bicubic /4 ("clean").

Grey photos (R = G = B) stay grey: their noise is grey too, so the model never learns that a grey LR image may
carry colour.
"""

from __future__ import annotations

import io

import numpy as np
from photos import is_grey
from PIL import Image, ImageFilter

KINDS = ("real", "clean")


def bicubic_down(hr: np.ndarray, scale: int = 4) -> np.ndarray:
    """Plain bicubic /``scale`` of a uint8 HxWx3 image."""
    img = Image.fromarray(hr)
    return np.asarray(img.resize((hr.shape[1] // scale, hr.shape[0] // scale), Image.Resampling.BICUBIC))


def degrade(hr: np.ndarray, rng: np.random.Generator, scale: int = 4) -> np.ndarray:
    """Gaussian blur (radius 0.2-1.5), bicubic /4, Gaussian noise (0-6/255; grey 40% of the time, always for grey
    photos), JPEG (quality 60-95). uint8 HxWx3 -> uint8 (H/4)x(W/4)x3."""
    grey = is_grey(hr)
    img = Image.fromarray(hr).filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.2, 1.5))))
    img = img.resize((hr.shape[1] // scale, hr.shape[0] // scale), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    std = float(rng.uniform(0.0, 6.0))
    shape = arr.shape[:2] + ((1,) if rng.random() < 0.4 or grey else (3,))
    arr = np.clip(arr + rng.normal(0.0, std, shape), 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    buf.seek(0)
    with Image.open(buf) as jpg:
        out = np.asarray(jpg.convert("RGB"))
    return np.repeat(out[..., :1], 3, axis=2) if grey else out


def degrade_kind(hr: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """LR of ``kind``: "real" (the chain above) or "clean" (bicubic /4 only)."""
    if kind == "clean":
        return bicubic_down(hr)
    if kind == "real":
        return degrade(hr, rng)
    raise ValueError(f"unknown degradation kind {kind!r}; known: {', '.join(KINDS)}")


def degrade_mix(hr: np.ndarray, rng: np.random.Generator, clean_p: float) -> np.ndarray:
    """Training LR: clean bicubic /4 with probability ``clean_p``, else the real-world chain."""
    return degrade_kind(hr, rng, "clean" if rng.random() < clean_p else "real")
