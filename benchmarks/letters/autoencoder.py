"""The letters autoencoder: a TAESD-format VAE (ComfyUI's `comfy.taesd.taesd.TAESD`) for 16-channel latents.

Encoder (built, not trained): ink = 1 - mean(RGB), cut into 8x8 pixel patches, each patch projected on
the 16 leading principal components of the training glyphs' patches, whitened (unit variance per
channel). TAESD's encoder computes exactly this: its first convolution makes the ink channel, its three
stride-2 convolutions move pixels into channels (pixel unshuffle by 8), its residual blocks are
identities (zero weights; ReLU of non-negative ink), its last convolution's centre tap is the projection.
Decoder: TAESD's decoder, trained here to map those latents (with a little noise, so that it also
decodes imperfect generated latents) back to the black-on-white glyph.

A 64x64 glyph becomes a [16, 8, 8] latent in SD3's layout. The file carries `vae_scale` = 1.5305 and
`vae_shift` = 0.0609, SD3's latent format, so that the SD3 model sees the whitened projection itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import comfy.latent_formats
import torch
import torch.nn.functional as F
from comfy.taesd.taesd import Decoder, Encoder
from torch import Tensor, nn

LATENT_CHANNELS = 16
PATCH = 8  # pixels per latent cell along each side
STRIDE_LEVELS = 3  # TAESD's stride-2 convolutions: 2 ** 3 = PATCH
ENCODER_STRIDE_LAYERS = (2, 6, 10)  # indices in TAESD's Encoder Sequential
ENCODER_BLOCK_LAYERS = (1, 3, 4, 5, 7, 8, 9, 11, 12, 13)
ENCODER_PROJECTION_LAYER = 14
SD3_FORMAT = comfy.latent_formats.SD3()
LATENT_NOISE = 0.1  # std of the noise added to latents while the decoder trains


@dataclass(frozen=True)
class PatchProjection:
    """Whitened principal components of 8x8 ink patches: latent = basis @ patch + offset.

    basis: [16, 64] over the patch's pixels in `F.pixel_unshuffle` channel order; offset: [16]
    (-basis @ the mean patch).
    """

    basis: Tensor
    offset: Tensor

    def encode(self, ink: Tensor) -> Tensor:
        """Ink [M, 64, 64] -> latents [M, 16, 8, 8]."""
        patches = F.pixel_unshuffle(ink[:, None], PATCH)
        return torch.einsum("kc,mchw->mkhw", self.basis, patches) + self.offset[None, :, None, None]


def fit_projection(ink: Tensor) -> PatchProjection:
    """The whitened 16-component PCA of all 8x8 patches of ink [M, 64, 64] (float64 eigendecomposition)."""
    patches = F.pixel_unshuffle(ink[:, None], PATCH).movedim(1, -1).reshape(-1, PATCH * PATCH).double()
    mean = patches.mean(dim=0)
    covariance = torch.cov((patches - mean).T)
    values, vectors = torch.linalg.eigh(covariance)
    leading = values.argsort(descending=True)[:LATENT_CHANNELS]
    basis = vectors[:, leading].T / values[leading].sqrt()[:, None]
    # A fixed sign per component (largest entry positive) makes the projection unique.
    basis = basis * basis.gather(1, basis.abs().argmax(dim=1, keepdim=True)).sign()
    return PatchProjection(basis.float(), (-basis @ mean).float())


def unshuffle_order() -> list[int]:
    """`F.pixel_unshuffle` channel of each of TAESD's 64 channels after the three stride-2 levels (built by
    `encoder_state`: level l sends channel c at sub-position s = 2 dy + dx to channel 4 c + s)."""
    order = []
    for channel in range(PATCH * PATCH):
        sub_positions = [(channel >> (2 * (STRIDE_LEVELS - 1 - level))) & 3 for level in range(STRIDE_LEVELS)]
        row = sum((position // 2) << level for level, position in enumerate(sub_positions))
        column = sum((position % 2) << level for level, position in enumerate(sub_positions))
        order.append(row * PATCH + column)
    return order


def encoder_state(projection: PatchProjection) -> dict[str, Tensor]:
    """The state dict of TAESD's `Encoder(16)` that computes `projection.encode(1 - mean(RGB))`."""
    with torch.device("meta"):
        layout = {name: tensor.shape for name, tensor in Encoder(LATENT_CHANNELS).state_dict().items()}
    state = {name: torch.zeros(shape) for name, shape in layout.items()}
    state["0.weight"][0, :, 1, 1] = -1.0 / 3.0  # channel 0 = ink = 1 - mean(R, G, B)
    state["0.bias"][0] = 1.0
    for level, layer in enumerate(ENCODER_STRIDE_LAYERS):
        for channel in range(4 ** level):
            for sub_position in range(4):
                state[f"{layer}.weight"][4 * channel + sub_position, channel, 1 + sub_position // 2,
                                         1 + sub_position % 2] = 1.0
    order = unshuffle_order()
    projection_weight = state[f"{ENCODER_PROJECTION_LAYER}.weight"]
    projection_weight[:, :, 1, 1] = projection.basis[:, order]
    state[f"{ENCODER_PROJECTION_LAYER}.bias"] = projection.offset.clone()
    return state


def projection_from_encoder(state: dict[str, Tensor]) -> PatchProjection:
    """The projection an `encoder_state` computes (inverse of `encoder_state`; float32)."""
    weight = state[f"{ENCODER_PROJECTION_LAYER}.weight"][:, :, 1, 1].float()
    basis = torch.empty_like(weight)
    basis[:, unshuffle_order()] = weight
    return PatchProjection(basis, state[f"{ENCODER_PROJECTION_LAYER}.bias"].float())


def new_decoder(seed: int) -> nn.Sequential:
    """TAESD's `Decoder(16)` with PyTorch's default initialisation (ComfyUI's layers skip it), the last
    convolution of every residual block scaled down so that each block starts near the identity."""
    torch.manual_seed(seed)
    decoder = Decoder(LATENT_CHANNELS)
    for module in decoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.Conv2d.reset_parameters(module)
    with torch.no_grad():
        for module in decoder.modules():
            if hasattr(module, "conv") and isinstance(module.conv, nn.Sequential):
                module.conv[-1].weight.mul_(0.1)
    return decoder


def decoder_target(ink: Tensor) -> Tensor:
    """What TAESD's decoder outputs for a glyph: RGB [M, 3, 64, 64] in [0, 1], black on white."""
    return (1.0 - ink)[:, None].expand(-1, 3, -1, -1)


def train_decoder(latents: Tensor, ink: Tensor, steps: int, batch: int, seed: int,
                  log: Callable[[str], None] = print) -> nn.Sequential:
    """TAESD's decoder trained with Adam (one-cycle learning rate, bfloat16 autocast) to map latents [M, 16, 8, 8] plus
    N(0, LATENT_NOISE^2) noise to the glyphs ink [M, 64, 64]; returned frozen."""
    generator = torch.Generator().manual_seed(seed)
    decoder = new_decoder(seed)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps, pct_start=0.1)
    running = 0.0
    for step in range(1, steps + 1):
        members = torch.randint(latents.shape[0], (batch,), generator=generator)
        noisy = latents[members] + LATENT_NOISE * torch.randn(latents[members].shape, generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.mse_loss(decoder(noisy).float(), decoder_target(ink[members]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        running += loss.item()
        if step % 100 == 0:
            log(f"step {step}/{steps}: mse {running / 100:.5f}")
            running = 0.0
    return decoder.eval().requires_grad_(False)


def vae_file_state(projection: PatchProjection, decoder: nn.Sequential) -> dict[str, Tensor]:
    """The single-file VAE that ComfyUI's VAELoader reads from models/vae: TAESD keys plus SD3's scale/shift."""
    state = {f"taesd_encoder.{name}": tensor for name, tensor in encoder_state(projection).items()}
    state.update({f"taesd_decoder.{name}": tensor for name, tensor in decoder.state_dict().items()})
    state["vae_scale"] = torch.tensor(SD3_FORMAT.scale_factor)
    state["vae_shift"] = torch.tensor(SD3_FORMAT.shift_factor)
    return state


def decode_ink(decoder: nn.Sequential, latents: Tensor) -> Tensor:
    """Latents [M, 16, 8, 8] (model space) -> ink [M, 64, 64], as VAEDecode + `rgb_to_ink` would give."""
    with torch.no_grad():
        rgb = decoder(latents).clamp(0.0, 1.0)
    return 1.0 - rgb.mean(dim=1)


def reconstruction_psnr(decoder: nn.Sequential, projection: PatchProjection, ink: Tensor) -> float:
    """Mean PSNR (dB) of decode(encode(ink)) against ink [M, 64, 64]."""
    error = (decode_ink(decoder, projection.encode(ink)) - ink).pow(2).flatten(1).mean(dim=1)
    return (-10 * torch.log10(error.clamp_min(1e-10))).mean().item()
