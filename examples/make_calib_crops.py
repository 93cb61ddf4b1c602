"""Write the packaged calibration set ``qdit4sr_export/data/calib`` (LR photos from training photos) and the
example LR images ``examples/lr`` (from the held-out photos), both made from scikit-image's bundled photographs by
the training degradation chain (blur, bicubic /4, noise, JPEG); seeded, so reruns give the same files.

    python examples/make_calib_crops.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from degradation import degrade  # noqa: E402
from photos import HELDOUT_PHOTOS, load_photos  # noqa: E402

#: Colour training photos only (never the held-out ones); at most this side (px) before the /4 degradation.
PHOTOS = ("astronaut.png", "coffee.png", "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
          "brick.png", "coins.png")
MAX_SIDE = 640
OUT = Path(__file__).resolve().parent.parent / "qdit4sr_export" / "data" / "calib"
#: Example inputs: 256 px centre crops of the held-out photos, so LR images of 64 px.
SAMPLE_SIDE = 256
SAMPLES = Path(__file__).resolve().parent / "lr"


def write_lr(names: tuple[str, ...], side: int, folder: Path, seed: int) -> None:
    """Degrade a centre crop (at most ``side`` px) of each photo and save it as PNG in ``folder``."""
    photos, _ = load_photos(names)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, photo) in enumerate(zip(names, photos)):
        h, w = photo.shape[:2]
        top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
        crop = np.ascontiguousarray(photo[top:top + side, left:left + side])
        lr = degrade(crop, np.random.default_rng([seed, index]))
        path = folder / (Path(name).stem + ".png")
        Image.fromarray(lr).save(path, optimize=True)
        print(f"{path}: {lr.shape[1]}x{lr.shape[0]}, {path.stat().st_size} bytes")


def main() -> None:
    """Both sets."""
    write_lr(PHOTOS, MAX_SIDE, OUT, 20261122)
    write_lr(HELDOUT_PHOTOS, SAMPLE_SIDE, SAMPLES, 20261123)


if __name__ == "__main__":
    main()
