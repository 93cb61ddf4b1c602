"""The example model's photographs: scikit-image's bundled photos plus photographic wallpapers of two Debian packages.

The wallpapers are fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into a cache folder (never
committed); only the photographs listed in ``WALLPAPERS`` are used (the packages also hold illustrations and
renders, left out). Every file's sha256 goes into the training record, so two machines can check they used the same.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

#: Real photographs bundled inside scikit-image (no download). Grey ones are used as 3-channel grey images.
SKIMAGE_TRAIN = ("astronaut.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                 "ihc.png", "retina.jpg", "brick.png", "gravel.png", "moon.png", "coins.png", "cell.png",
                 "clock_motion.png")
#: Never used for training or for choosing the inference settings.
HELDOUT_PHOTOS = ("chelsea.png", "rocket.jpg", "camera.png", "grass.png")
#: Photographic wallpapers (package, path inside it), checked by eye: landscapes, objects, textures. Left out as
#: illustrations or renders: every other wallpaper of both packages (e.g. Altai, Volna, MilkyWay, Kite's drawn kite).
WALLPAPERS = (
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/Grey/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/Path/contents/images/2560x1600.jpg"),
    ("plasma-workspace-wallpapers", "usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg"),
)
#: Wallpapers are reduced to this long side (Lanczos): closer to the scale of the other photos, and the reduction
#: removes the wallpapers' own JPEG artefacts from the HR targets.
WALLPAPER_SIDE = 1024
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


def skimage_dir() -> Path:
    """The folder of scikit-image's bundled sample photos."""
    from skimage import data

    return Path(data.__file__).parent


def fetch_wallpapers(cache: Path) -> Path:
    """Unpack the wallpaper packages into ``cache/wallpapers`` (once; later calls reuse it); returns that folder."""
    root = cache / "wallpapers"
    if all((root / path).is_file() for _, path in WALLPAPERS):
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise SystemExit("the wallpaper photographs need apt-get and dpkg (a Debian-based system)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        packages = sorted({package for package, _ in WALLPAPERS})
        subprocess.run(["apt-get", "download", *packages], cwd=tmp, check=True)
        unpacked = Path(tmp) / "root"
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
        missing = [path for _, path in WALLPAPERS if not (unpacked / path).is_file()]
        if missing:
            raise SystemExit(f"the downloaded packages lack {missing[0]} (a different package version?)")
        for _, path in WALLPAPERS:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(unpacked / path, root / path)
    return root


def _rgb(path: Path, max_side: int | None = None) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if max_side and max(img.size) > max_side:
            k = max_side / max(img.size)
            img = img.resize((round(img.width * k), round(img.height * k)), Image.Resampling.LANCZOS)
        return np.asarray(img)


def load_photos(names: tuple[str, ...]) -> tuple[list[np.ndarray], dict[str, str]]:
    """RGB uint8 arrays of scikit-image photos by name, and their sha256."""
    photos, digests = [], {}
    for name in names:
        path = skimage_dir() / name
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        photos.append(_rgb(path))
    return photos, digests


def load_wallpapers(cache: Path) -> tuple[list[np.ndarray], dict[str, str]]:
    """RGB uint8 arrays of the chosen wallpapers (reduced to ``WALLPAPER_SIDE``), and their sha256."""
    root = fetch_wallpapers(cache)
    photos, digests = [], {}
    for _, path in WALLPAPERS:
        file = root / path
        digests[path.split("/")[3] + "/" + file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
        photos.append(_rgb(file, WALLPAPER_SIDE))
    return photos, digests


def is_grey(image: np.ndarray) -> bool:
    """True when every pixel has R = G = B."""
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
