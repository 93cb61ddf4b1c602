import numpy as np
import pytest
import torch
from PIL import Image

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.calib_images import find_autoencoder_folder, latents_from_folder, random_crops, read_images


def tiny_vae_folder(root):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        scaling_factor=1.5305, shift_factor=0.0609,
    )
    vae.save_pretrained(root / "vae")
    (root / "transformer").mkdir()
    return root


def photo_folder(folder, sizes=((150, 130), (90, 200))):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def test_crops_are_seeded_and_sized(tmp_path):
    images = read_images(photo_folder(tmp_path / "photos"))
    assert len(images) == 2  # the broken JPEG is skipped with a warning
    a = random_crops(images, count=5, size=128, seed=1)
    b = random_crops(images, count=5, size=128, seed=1)
    assert all(c.size == (128, 128) for c in a)  # the 90-wide image was upscaled first
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_latents_from_folder_use_the_models_autoencoder(tmp_path):
    root = tiny_vae_folder(tmp_path / "model")
    assert find_autoencoder_folder(root / "transformer") == root / "vae"
    latents = latents_from_folder(photo_folder(tmp_path / "photos"), root, count=3, crop=32)
    assert latents.shape == (3, 16, 16, 16)  # 32 px crop -> x4 -> 128 px -> /8
    again = latents_from_folder(tmp_path / "photos", root, count=3, crop=32)
    assert torch.equal(latents, again)


def test_folder_without_images_or_autoencoder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"not a png")
    root = tiny_vae_folder(tmp_path / "model")
    with pytest.raises(UserError, match="has no readable images"):
        latents_from_folder(empty, root)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(UserError, match="need the model's autoencoder"):
        latents_from_folder(empty, bare)
    with pytest.raises(UserError, match="--calib-count must be >= 1"):
        latents_from_folder(photo_folder(tmp_path / "photos"), root, count=0)
    with pytest.raises(UserError, match="calibration folder not found"):
        read_images(tmp_path / "missing")
