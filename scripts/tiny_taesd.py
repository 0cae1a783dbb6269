"""A random TAESD decoder in the file format ComfyUI reads from `models/vae_approx`.

No weights can be downloaded here, so the tests write their own: the tensor names and shapes come from
ComfyUI's own TAESD decoder network (`comfy.taesd.taesd.Decoder`, built on the `meta` device), the values
from a generator seeded once (He-normal convolutions, zero biases; the last convolution is scaled and
biased so that the output sits around mid-grey, as a real decoder's 0..1 RGB does). The image means
nothing, but it is finite, differentiable and differs between latents, which is what the tests need.

Run inside the host virtualenv (see `comfy_host.py`):

    .host/venv/bin/python scripts/tiny_taesd.py   # writes models/vae_approx/taesd_decoder.safetensors
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402

FACTORY_VERSION = 1
FINGERPRINT_KEY = "particle_repulsion.tiny_taesd"
SD15_DECODER = "taesd_decoder"  # ComfyUI's TAESD decoder name for SD1.x latents
OUTPUT_SCALE = 0.005  # keeps the RGB output within about 0..1 for latents of unit spread
MID_GREY = 0.5


def decoder_layout(latent_channels: int) -> dict[str, torch.Size]:
    """Tensor name -> shape of ComfyUI's TAESD decoder for `latent_channels`-channel latents."""
    comfy_host.use_comfyui_in_process()
    from comfy.taesd.taesd import Decoder

    with torch.device("meta"):
        network = Decoder(latent_channels=latent_channels)
    return {name: tensor.shape for name, tensor in network.state_dict().items()}


def random_decoder_state(latent_channels: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A TAESD decoder state dict with seeded random weights (float32, names sorted before drawing)."""
    layout = decoder_layout(latent_channels)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(layout):
        shape = layout[name]
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)
        else:
            state[name] = torch.zeros(shape)
    last_weight, last_bias = _last_convolution(layout)
    state[last_weight] *= OUTPUT_SCALE
    state[last_bias] = torch.full(layout[last_bias], MID_GREY)
    return state


def _last_convolution(layout: dict[str, torch.Size]) -> tuple[str, str]:
    """Names of the weight and bias of the decoder's final (RGB) convolution."""
    last_index = max(int(name.split(".")[0]) for name in layout)
    return f"{last_index}.weight", f"{last_index}.bias"


def fingerprint(latent_channels: int, seed: int) -> str:
    payload = json.dumps([FACTORY_VERSION, latent_channels, seed, OUTPUT_SCALE, MID_GREY])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stored_fingerprint(path: Path) -> str | None:
    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get(FINGERPRINT_KEY)


def ensure_decoder(folder: Path, kind: str = SD15_DECODER, latent_channels: int = 4, seed: int = 0) -> Path:
    """Write `<kind>.safetensors` into `folder` unless this build is already there; return its path.

    A file of that name that this script did not write (a real TAESD decoder) is never replaced.
    """
    path = folder / f"{kind}.safetensors"
    wanted = fingerprint(latent_channels, seed)
    if path.exists():
        found = stored_fingerprint(path)
        if found == wanted:
            return path
        if found is None:
            raise FileExistsError(f"{path} exists and was not written by tiny_taesd.py; it is left alone.")
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(random_decoder_state(latent_channels, seed), str(partial), metadata={FINGERPRINT_KEY: wanted})
    partial.replace(path)
    return path


def host_vae_approx_folder() -> Path:
    return comfy_host.COMFYUI_DIR / "models" / "vae_approx"


def main() -> int:
    print(f"[tiny-taesd] {ensure_decoder(host_vae_approx_folder())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
