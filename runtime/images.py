"""Reading and writing images for the SR pipeline: 8/16-bit RGB, greyscale, palette and alpha (PNG, JPEG, ...).

Images become float (3, H, W) in [0, 1] plus an optional (1, H, W) alpha; greyscale is repeated to 3 channels
and written back as greyscale. 16-bit PNGs are read and written at full precision with pypng (Pillow reduces
16-bit RGB to 8 bits). Images are read from a path or from bytes (a Ray dataset's binary column). Writes are atomic
(:func:`qdit4sr_export.engine.atomic.atomic_path`: temp name, then rename).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image, UnidentifiedImageError

from qdit4sr_export.errors import UserError

#: Largest input accepted (pixels): 2000 x 2000; the x4 output has 16 times as many (64 MP).
MAX_PIXELS = 4_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Pillow's format name for each suffix (what it writes; 16-bit PNG goes through pypng).
PILLOW_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
                  ".webp": "WEBP"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageInfo:
    """What the file held: Pillow mode, bits per sample, alpha, (width, height)."""

    mode: str
    bit_depth: int
    has_alpha: bool
    grey: bool
    size: tuple[int, int]


@dataclass
class LoadedImage:
    """RGB (3, H, W) and alpha (1, H, W) or None, floats in [0, 1]."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    info: ImageInfo


def _png_bit_depth(data: bytes) -> int | None:
    """Bit depth from a PNG's IHDR chunk (None for other formats)."""
    if len(data) < 26 or not data.startswith(PNG_SIGNATURE):
        return None
    return data[24]


def _load_png16(data: bytes) -> tuple[np.ndarray, bool, bool]:
    """(H, W, planes) float [0, 1], grey, alpha of a 16-bit PNG via pypng."""
    width, height, rows, meta = png.Reader(bytes=data).asDirect()
    planes = meta["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)
    return arr.astype(np.float32) / 65535.0, planes in (1, 2), planes in (2, 4)


def _check_size(path: Path | str, width: int, height: int) -> None:
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise UserError(f"{path}: image size {width}x{height} is outside 1..{MAX_PIXELS} pixels")


def load_image(path: str | Path, data: bytes | None = None) -> LoadedImage:
    """Read one image from ``path`` (or from ``data``, the file's bytes, with ``path`` only naming it in errors);
    a missing, unreadable, truncated, non-image or absurdly large file is a one-line UserError."""
    if data is None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size(path, *img.size)
            mode, size = img.mode, img.size
            depth = _png_bit_depth(data) or (16 if mode.startswith("I;16") else 8)
            if depth == 16:
                arr, grey, has_alpha = _load_png16(data)
            else:
                if mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif mode in ("1", "I", "F"):
                    img = img.convert("L")
                elif mode not in ("L", "LA", "RGB", "RGBA"):
                    img = img.convert("RGBA" if "A" in mode else "RGB")
                grey, has_alpha = img.mode in ("L", "LA"), img.mode in ("LA", "RGBA")
                arr = np.asarray(img, dtype=np.float32) / 255.0
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{path}: not a readable image (no image format Pillow reads)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            png.Error) as exc:
        raise UserError(f"{path}: not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    colour = t[:1].repeat(3, 1, 1) if grey else t[:3]
    alpha = t[-1:] if has_alpha else None
    return LoadedImage(colour.contiguous(), alpha, ImageInfo(mode, depth, has_alpha, grey, size))


def check_output_format(path: str | Path) -> Path:
    """A one-line error unless ``path``'s suffix names a format this runtime writes (checked before any compute, so
    a typo fails in a second, not after the diffusion)."""
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: unsupported output format {fmt or '(no suffix)'}; use one of {', '.join(IMAGE_SUFFIXES)}")
    Image.init()
    if PILLOW_FORMATS[fmt] not in Image.SAVE:
        raise UserError(f"{path}: this Pillow cannot write {PILLOW_FORMATS[fmt]} ({fmt}); use .png")
    return path


def _write_png16(path: Path, planes: np.ndarray) -> None:
    """(H, W, C) uint16 planes -> 16-bit PNG (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)."""
    h, w, c = planes.shape
    writer = png.Writer(width=w, height=h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16)
    with open(path, "wb") as f:
        writer.write(f, planes.reshape(h, w * c).tolist())


def save_image(path: str | Path, rgb: torch.Tensor, alpha: torch.Tensor | None = None, *, grey: bool = False,
               bit_depth: int = 8) -> Path:
    """Write (3, H, W) [0, 1] (+ alpha) atomically; the format follows the suffix. 16 bits only for PNG;
    alpha is dropped for formats without it (JPEG)."""
    from qdit4sr_export.engine.atomic import atomic_path

    path = check_output_format(path)
    if not bool(torch.isfinite(rgb).all()) or (alpha is not None and not bool(torch.isfinite(alpha).all())):
        raise UserError(f"{path}: the result has non-finite values; nothing was written")
    fmt = path.suffix.lower()
    if fmt in (".jpg", ".jpeg", ".bmp"):
        alpha = None
    colour = rgb.mean(0, keepdim=True) if grey else rgb
    planes = torch.cat([colour, alpha]) if alpha is not None else colour
    arr = planes.clamp(0, 1).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        if bit_depth == 16 and fmt == ".png":
            _write_png16(tmp, np.round(arr * 65535).astype(np.uint16))
        else:
            u8 = np.round(arr * 255).astype(np.uint8)
            mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[u8.shape[2]]
            img = Image.fromarray(u8[:, :, 0] if mode == "L" else u8, mode=mode)
            img.save(tmp, format=PILLOW_FORMATS[fmt], **({"quality": 95} if fmt in (".jpg", ".jpeg") else {}))
    return path


def find_inputs(paths: list[str | Path]) -> list[Path]:
    """Files as given, and the image files (by suffix, sorted) of each folder; a missing path is an error."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return found
