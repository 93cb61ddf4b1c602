"""Write the packaged calibration set ``qdit4sr_export/data/calib``: LR photos made from scikit-image's bundled
photographs by the training degradation chain (blur, bicubic /4, noise, JPEG); seeded, so reruns give the same files.

    python examples/make_calib_crops.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import degrade, load_photos  # noqa: E402

#: Colour training photos only (never the held-out ones); at most this side (px) before the /4 degradation.
PHOTOS = ("astronaut.png", "coffee.png", "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
          "brick.png", "coins.png")
MAX_SIDE = 640
OUT = Path(__file__).resolve().parent.parent / "qdit4sr_export" / "data" / "calib"


def main() -> None:
    """Degrade each photo (centre crop to MAX_SIDE) and save it as PNG."""
    photos, _ = load_photos(PHOTOS)
    OUT.mkdir(parents=True, exist_ok=True)
    for index, (name, photo) in enumerate(zip(PHOTOS, photos)):
        h, w = photo.shape[:2]
        top, left = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
        crop = np.ascontiguousarray(photo[top:top + MAX_SIDE, left:left + MAX_SIDE])
        lr = degrade(crop, np.random.default_rng([20261122, index]))
        path = OUT / (Path(name).stem + ".png")
        Image.fromarray(lr).save(path, optimize=True)
        print(f"{path.name}: {lr.shape[1]}x{lr.shape[0]}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
