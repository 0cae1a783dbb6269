"""The letters text-to-image transformer: ComfyUI's MMDiT (SD3's architecture) at depth 2, trained here.

ComfyUI detects an SD3 model from the file's shapes: depth = x_embedder width / 64 (so width 128, two
heads of 64, two joint blocks), context width 4096 and pooled width 2048 for SD3's text encoders. Only
CLIP-L's 768 columns of either are ever non-zero (see `conditioning.py`), so training uses 768-wide
input layers and `export_state` pads them with zero columns (the exact same function of the inputs).
The random CLIP-L's outputs share a large common part (cosine 0.98 between "the letter A" and "the
letter R"), so training standardises them per feature (`InputStandardisation`) and `export_state` folds
that affine map into the two input layers: the file takes ComfyUI's raw conditioning.

Training follows SD3 as ComfyUI samples it (`model_sampling` of SD3: discrete flow, shift 3.0, CONST
noise scaling): x_sigma = (1 - sigma) x_0 + sigma noise, the network gets timestep 1000 sigma and
predicts the velocity noise - x_0 (ComfyUI's denoised = x_sigma - sigma v). sigma is SD3's training
distribution: logit-normal t, shifted by 3 as ComfyUI's schedule is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import comfy.ops
import torch
import torch.nn.functional as F
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
from torch import Tensor, nn

from .conditioning import CLIP_L_WIDTH, SD3_CONTEXT_WIDTH, SD3_POOLED_WIDTH

DEPTH = 2
SHIFT = 3.0
TIMESTEP_MULTIPLIER = 1000.0
EMA_DECAY = 0.998
CHECKPOINT_EVERY = 1000


def mmdit_config(context_width: int, pooled_width: int) -> dict:
    return {"input_size": None, "patch_size": 2, "in_channels": 16, "out_channels": 16, "depth": DEPTH,
            "adm_in_channels": pooled_width, "qk_norm": "rms", "pos_embed_scaling_factor": None,
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": context_width, "out_features": 64 * DEPTH}}}


TRAINING_CONFIG = mmdit_config(CLIP_L_WIDTH, CLIP_L_WIDTH)
FILE_CONFIG = mmdit_config(SD3_CONTEXT_WIDTH, SD3_POOLED_WIDTH)


def new_mmdit(seed: int) -> MMDiT:
    """An MMDiT for training (768-wide text inputs), initialised as DiT: Xavier linear layers, zero
    biases, adaLN-Zero (modulation and final projection start at zero, so every block starts as identity)."""
    torch.manual_seed(seed)
    model = MMDiT(**TRAINING_CONFIG, operations=comfy.ops.disable_weight_init)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if name.endswith("adaLN_modulation.1") or name == "final_layer.linear":
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        if name.startswith("t_embedder.mlp") and isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.LayerNorm) and module.weight is not None:
            nn.init.ones_(module.weight)
    for name, parameter in model.named_parameters():
        if name.endswith((".ln_q.weight", ".ln_k.weight")):
            nn.init.ones_(parameter)
    return model


@dataclass(frozen=True)
class InputStandardisation:
    """Per-feature mean and standard deviation [768] of the context (over captions and tokens) and of the
    pooled vector (over captions): training feeds (x - mean) / std."""

    context_mean: Tensor
    context_std: Tensor
    pooled_mean: Tensor
    pooled_std: Tensor

    @staticmethod
    def fit(context: Tensor, pooled: Tensor) -> "InputStandardisation":
        """From every caption's context [C, 77, 768] and pooled [C, 768], each caption weighted equally."""
        tokens = context.reshape(-1, context.shape[-1])
        return InputStandardisation(tokens.mean(dim=0), tokens.std(dim=0).clamp_min(1e-6), pooled.mean(dim=0),
                                    pooled.std(dim=0).clamp_min(1e-6))

    def context(self, context: Tensor) -> Tensor:
        return (context - self.context_mean) / self.context_std

    def pooled(self, pooled: Tensor) -> Tensor:
        return (pooled - self.pooled_mean) / self.pooled_std


def _fold(weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """A linear layer on (x - mean) / std, rewritten as one on x: W / std, b - (W / std) mean."""
    folded = weight / std
    return folded, bias - folded @ mean


def export_state(model: MMDiT, standardisation: InputStandardisation,
                 dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """The state dict UNETLoader reads (SD3 layout; the standardisation folded into the text input layers,
    which are zero-padded to 4096 / 2048 inputs): weights as `dtype`, biases as float32."""
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for layer, mean, std in (("context_embedder", standardisation.context_mean, standardisation.context_std),
                             ("y_embedder.mlp.0", standardisation.pooled_mean, standardisation.pooled_std)):
        state[f"{layer}.weight"], state[f"{layer}.bias"] = _fold(state[f"{layer}.weight"], state[f"{layer}.bias"],
                                                               mean, std)
    for key, width in (("context_embedder.weight", SD3_CONTEXT_WIDTH), ("y_embedder.mlp.0.weight", SD3_POOLED_WIDTH)):
        state[key] = F.pad(state[key], (0, width - state[key].shape[1]))
    # Biases stay float32: the folded ones carry large offsets that float16 would round.
    return {name: tensor.to(torch.float32 if name.endswith("bias") else dtype).contiguous()
            for name, tensor in state.items()}


def training_sigmas(count: int, generator: torch.Generator) -> Tensor:
    """SD3's noise levels [count] in (0, 1): logit-normal(0, 1), shifted as ComfyUI's schedule (shift 3)."""
    t = torch.sigmoid(torch.randn(count, generator=generator))
    return SHIFT * t / (1 + (SHIFT - 1) * t)


def flow_matching_loss(model: MMDiT, clean: Tensor, context: Tensor, pooled: Tensor,
                       generator: torch.Generator) -> Tensor:
    """Mean squared error of the predicted velocity on latents [B, 16, 8, 8] with their text conditioning."""
    sigma = training_sigmas(clean.shape[0], generator)
    noise = torch.randn(clean.shape, generator=generator)
    noisy = (1 - sigma)[:, None, None, None] * clean + sigma[:, None, None, None] * noise
    velocity = model(noisy, sigma * TIMESTEP_MULTIPLIER, y=pooled, context=context)
    return F.mse_loss(velocity.float(), noise - clean)


@dataclass(frozen=True)
class CaptionedLatents:
    """Training data: latents [M, 16, 8, 8]; per latent, the caption indices [M, 2] of its plain and its
    style-naming caption, and a sampling weight [M]; the captions' standardised context [C, 77, 768] and
    pooled [C, 768]; `empty` is the index of the empty caption (the unconditional prompt)."""

    latents: Tensor
    caption_pairs: Tensor
    weights: Tensor
    context: Tensor
    pooled: Tensor
    empty: int


@dataclass(frozen=True)
class Schedule:
    steps: int
    batch: int
    learning_rate: float
    style_caption_rate: float  # share of samples captioned "the letter R by <style>"
    unconditional_rate: float  # share captioned "" (classifier-free guidance)


def batch_captions(data: CaptionedLatents, members: Tensor, schedule: Schedule, generator: torch.Generator) -> Tensor:
    """Caption index per member: plain, style-naming or empty, at the schedule's rates."""
    draw = torch.rand(members.numel(), generator=generator)
    pairs = data.caption_pairs[members]
    captions = torch.where(draw < schedule.style_caption_rate, pairs[:, 1], pairs[:, 0])
    return torch.where(draw > 1 - schedule.unconditional_rate, torch.full_like(captions, data.empty), captions)


def train_mmdit(data: CaptionedLatents, schedule: Schedule, seed: int, log: Callable[[str], None] = print,
                checkpoint: Callable[[MMDiT], None] | None = None) -> tuple[MMDiT, list[float]]:
    """The EMA weights of an MMDiT trained with AdamW (warm-up, cosine decay, bfloat16 autocast), and the
    mean loss of every 100 steps. `checkpoint(ema_model)` is called every `CHECKPOINT_EVERY` steps."""
    generator = torch.Generator().manual_seed(seed)
    model = new_mmdit(seed)
    averaged = new_mmdit(seed)
    averaged.load_state_dict(model.state_dict())
    averaged.requires_grad_(False)
    optimiser = torch.optim.AdamW(model.parameters(), lr=schedule.learning_rate, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, schedule.learning_rate, total_steps=schedule.steps,
                                                      pct_start=0.05)
    losses, running = [], 0.0
    for step in range(1, schedule.steps + 1):
        members = torch.multinomial(data.weights, schedule.batch, replacement=True, generator=generator)
        captions = batch_captions(data, members, schedule, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = flow_matching_loss(model, data.latents[members], data.context[captions], data.pooled[captions],
                                      generator)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        lr_schedule.step()
        with torch.no_grad():
            for average, current in zip(averaged.parameters(), model.parameters()):
                average.lerp_(current, 1 - EMA_DECAY)
        running += loss.item()
        if step % 100 == 0:
            losses.append(running / 100)
            log(f"step {step}/{schedule.steps}: loss {losses[-1]:.4f}")
            running = 0.0
        if checkpoint is not None and step % CHECKPOINT_EVERY == 0:
            checkpoint(averaged)
    return averaged.eval(), losses
