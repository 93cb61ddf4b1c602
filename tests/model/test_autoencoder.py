"""The pipeline autoencoders: exact pixel-unshuffle map and diffusers' AutoencoderKL behind one interface."""

import json

import pytest
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.autoencoder import DiffusersAutoencoder, PixelUnshuffleAutoencoder, load_autoencoder


def test_pixel_unshuffle_is_exactly_invertible_and_round_trips_its_config(tmp_path):
    ae = PixelUnshuffleAutoencoder(2, scaling_factor=1.7, shift_factor=-0.1)
    images = torch.rand(2, 3, 16, 24) * 2 - 1
    z = ae.encode(images)
    assert z.shape == (2, 12, 8, 12) and ae.downscale == 2 and ae.latent_channels == 12
    assert torch.allclose(ae.decode(z), images, atol=1e-6)
    assert torch.allclose(z.mean(), (images.mean() + 0.1) * 1.7, atol=1e-5)
    loaded = load_autoencoder(ae.save(tmp_path / "vae"))
    assert isinstance(loaded, PixelUnshuffleAutoencoder) and loaded.to_dict() == ae.to_dict()


def test_diffusers_autoencoder_applies_shift_and_scale(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, scaling_factor=1.5, shift_factor=0.25)
    vae.save_pretrained(tmp_path / "vae")
    ae = load_autoencoder(tmp_path / "vae")
    assert isinstance(ae, DiffusersAutoencoder) and ae.downscale == 2 and ae.latent_channels == 16
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        raw = vae.encode(images).latent_dist.mode()
    assert torch.allclose(ae.encode(images), (raw - 0.25) * 1.5)
    assert ae.decode(ae.encode(images)).shape == images.shape


@pytest.mark.parametrize("content, message", [
    (None, "no config.json"),
    ("{not json", "cannot read the autoencoder config"),
    (json.dumps({"_class_name": "PixelUnshuffleAutoencoder", "factor": 2, "colour": 1}), "unknown .* key"),
    (json.dumps({"_class_name": "PixelUnshuffleAutoencoder", "factor": 0}), "factor must be a positive integer"),
])
def test_bad_autoencoder_folders(tmp_path, content, message):
    folder = tmp_path / "vae"
    folder.mkdir()
    if content is not None:
        (folder / "config.json").write_text(content)
    with pytest.raises(UserError, match=message):
        load_autoencoder(folder)


def test_encode_rejects_bad_shapes():
    ae = PixelUnshuffleAutoencoder(2)
    with pytest.raises(UserError, match="not a multiple of the factor"):
        ae.encode(torch.zeros(1, 3, 5, 6))
    with pytest.raises(UserError, match="decode expects latents"):
        ae.decode(torch.zeros(1, 4, 2, 2))
