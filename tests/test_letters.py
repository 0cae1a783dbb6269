"""The letters model's committed files: ComfyUI loads and detects them, the judges are accurate on held-out
renders, the VAE is the patch projection it claims to be, and the installer never overwrites a user's file."""
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

MAX_FILE_BYTES = 5_000_000
LETTER_JUDGE_MIN_ACCURACY = 0.98
FONT_JUDGE_MIN_ACCURACY = 0.90
MIN_RECONSTRUCTION_PSNR_DB = 18.0


@pytest.fixture(scope="module")
def letters(comfy):
    import letters.install

    return letters.install


@pytest.fixture(scope="module")
def heldout(letters):
    """The committed held-out renders: ink [M, 64, 64] in [0, 1], letter and style indices [M]."""
    data = np.load(letters.HELDOUT_FILE)
    return (torch.from_numpy(data["ink"]).float() / 255, torch.from_numpy(data["letters"]),
            torch.from_numpy(data["styles"]))


def test_every_committed_file_is_at_most_5_mb(letters):
    files = sorted(letters.WEIGHTS.iterdir())
    assert {path.name for path in files} >= {letters.TRANSFORMER_FILE.name, letters.VAE_FILE.name,
                                              letters.FONTS_EMBEDDER_FILE.name, letters.HELDOUT_FILE.name}
    assert {path.name: path.stat().st_size for path in files if path.stat().st_size > MAX_FILE_BYTES} == {}


def test_the_transformer_loads_as_sd3_and_predicts_finite_velocities(letters):
    import comfy.model_base
    import comfy.sd
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    model = comfy.sd.load_diffusion_model(str(letters.TRANSFORMER_FILE))
    assert type(model.model.model_config) is comfy.supported_models.SD3
    assert isinstance(model.model, comfy.model_base.SD3)
    network = model.model.diffusion_model
    assert isinstance(network, MMDiT) and len(network.joint_blocks) == 2 and network.hidden_size == 128
    with torch.inference_mode():
        velocity = network(torch.randn(2, 16, 8, 8), torch.tensor([900.0, 100.0]), y=torch.randn(2, 2048),
                           context=torch.randn(2, 77, 4096))
    assert velocity.shape == (2, 16, 8, 8) and torch.isfinite(velocity).all()


def test_the_vae_is_taesd_and_encodes_the_patch_projection(letters, heldout):
    import comfy.latent_formats
    import comfy.sd
    import comfy.taesd.taesd
    import comfy.utils
    from letters.glyphs import ink_to_rgb
    from letters.models import load_projection

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(letters.VAE_FILE)))
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD) and vae.latent_channels == 16
    ink = heldout[0][::25]
    latent = vae.encode(ink_to_rgb(ink))
    model_space = comfy.latent_formats.SD3().process_in(latent)
    torch.testing.assert_close(model_space, load_projection().encode(ink), atol=2e-2, rtol=1e-2)
    decoded = 1 - vae.decode(latent).mean(dim=-1)
    psnr = -10 * torch.log10((decoded - ink).pow(2).flatten(1).mean(dim=1)).mean()
    assert psnr > MIN_RECONSTRUCTION_PSNR_DB


def test_the_judges_reach_their_accuracy_on_heldout_renders(letters, heldout):
    from letters.judges import accuracy
    from letters.models import font_judge, letter_judge

    ink, letter_labels, style_labels = heldout
    assert accuracy(letter_judge(), ink, letter_labels) >= LETTER_JUDGE_MIN_ACCURACY
    assert accuracy(font_judge(), ink, style_labels) >= FONT_JUDGE_MIN_ACCURACY


def test_the_installer_updates_its_own_files_and_refuses_to_overwrite_a_users(letters, tmp_path):
    from safetensors.torch import save_file

    target = letters.install(tmp_path, folders=("vae",))["vae"]
    assert target.read_bytes() == letters.VAE_FILE.read_bytes()
    save_file({"old": torch.zeros(1)}, str(target), metadata={letters.MARK_KEY: letters.VAE_MARK})  # an older version
    assert letters.install(tmp_path, folders=("vae",)) == {"vae": target}
    assert target.read_bytes() == letters.VAE_FILE.read_bytes()
    save_file({"mine": torch.zeros(1)}, str(target))  # a user's file of the same name
    users_bytes = target.read_bytes()
    with pytest.raises(letters.ForeignFile):
        letters.install(tmp_path, folders=("vae",))
    assert target.read_bytes() == users_bytes
