"""CLIP vision on the predicted image: latents -> RGB (a small decoder) -> CLIP's input -> image embedding.

Pure torch. The caller hands in the pieces it loaded (ComfyUI's glue lives in `nodes/`):

- an `ImageDecoder`: a latent-to-RGB map the pack owns, e.g. a TAESD decoder network (8x upscale) or the
  model's linear latent-to-RGB preview factors (`latent_rgb_decoder`, no upscale);
- a `FrozenVisionTower`: a frozen, differentiable float32 copy of a CLIP vision transformer in the
  Hugging Face layout (the one ComfyUI builds: `vision_model.embeddings`, `...encoder.layers`,
  `visual_projection`), taking its weights from the loaded model;
- CLIP's per-channel pixel mean and standard deviation.

Why a copy: weights loaded inside a ComfyUI node are inference tensors that autograd cannot save for the
backward pass, and ComfyUI's own encoder layers add their residuals in place (`x += ...`), which autograd
refuses to differentiate. The copy holds ordinary tensors (made outside inference mode, never requiring
grad) and runs every step out of place.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Embedder, check_whole_number
from .latent_rgb import LatentRGBEmbedder, RGBFactors

Activation = Callable[[Tensor], Tensor]
_TOWER_PREFIXES = ("vision_model.", "visual_projection.")


class ImageDecoder(nn.Module):
    """A differentiable latent-to-image map: `[N, C, H, W] -> [N, 3, upscale * H, upscale * W]`, RGB ~0..1.

    network: the module doing it (its output must already be RGB in about 0..1, as TAESD's decoder gives);
    latent_channels: C; upscale: image pixels per latent pixel (8 for TAESD, 1 for a linear preview);
    name: what it is, for messages (e.g. "TAESD (taesd_decoder.safetensors)").
    """

    def __init__(self, network: nn.Module, latent_channels: int, upscale: int, name: str) -> None:
        super().__init__()
        self.network = network
        self.latent_channels = check_whole_number("decoder's latent channel count", latent_channels, minimum=1)
        self.upscale = check_whole_number("decoder's upscale factor", upscale, minimum=1)
        self.name = name

    def forward(self, latents: Tensor) -> Tensor:
        return self.network(latents)


class _PreviewAsUnitRGB(nn.Module):
    """The latent-to-RGB preview (about -1..1) mapped to 0..1, as ComfyUI's previews show it."""

    def __init__(self, preview: LatentRGBEmbedder) -> None:
        super().__init__()
        self.preview = preview

    def forward(self, latents: Tensor) -> Tensor:
        return (self.preview.feature_map(latents) + 1) / 2


def latent_rgb_decoder(rgb_factors: RGBFactors, rgb_bias: Sequence[float] | Tensor | None = None) -> ImageDecoder:
    """The model's linear preview factors (`[C, 3]`, bias `[3]`) as an `ImageDecoder` at latent resolution."""
    preview = LatentRGBEmbedder(rgb_factors, rgb_bias)
    return ImageDecoder(_PreviewAsUnitRGB(preview), preview.latent_channels, upscale=1,
                        name="the latent-to-RGB preview factors")


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, tokens: Tensor) -> Tensor:
        """Self-attention over `[N, T, D]` tokens."""
        count, length, width = tokens.shape

        def split_heads(projected: Tensor) -> Tensor:
            return projected.view(count, length, self.heads, width // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split_heads(self.q_proj(tokens)), split_heads(self.k_proj(tokens)),
                                                  split_heads(self.v_proj(tokens)))
        return self.out_proj(attended.transpose(1, 2).reshape(count, length, width))


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: Activation) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.activation = activation

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(self.activation(self.fc1(tokens)))


class _EncoderLayer(nn.Module):
    """A pre-norm transformer layer with out-of-place residuals (differentiable, unlike ComfyUI's `+=`)."""

    def __init__(self, width: int, heads: int, hidden: int, activation: Activation, eps: float) -> None:
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(width, eps=eps), nn.LayerNorm(width, eps=eps)
        self.self_attn = _Attention(width, heads)
        self.mlp = _MLP(width, hidden, activation)

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = tokens + self.self_attn(self.layer_norm1(tokens))
        return tokens + self.mlp(self.layer_norm2(tokens))


class _Encoder(nn.Module):
    def __init__(self, layers: list[_EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _Embeddings(nn.Module):
    def __init__(self, width: int, patch_size: int, positions: int) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.patch_embedding = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.position_embedding = nn.Embedding(positions, width)

    def forward(self, pixels: Tensor) -> Tensor:
        """Tokens `[N, 1 + g*g, D]` (class token first) of pixels `[N, 3, g*p, g*p]`."""
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        class_token = self.class_embedding.expand(pixels.shape[0], 1, -1)
        return torch.cat([class_token, patches], dim=1) + self.positions(math.isqrt(patches.shape[1]))

    def positions(self, grid: int) -> Tensor:
        """The position table `[1 + grid*grid, D]`: the trained one, or its patch part resized bicubically
        from the trained grid to `grid` x `grid` (the class token's row kept)."""
        table = self.position_embedding.weight
        trained_grid = math.isqrt(table.shape[0] - 1)
        if grid == trained_grid:
            return table
        patch_positions = table[1:].T.reshape(1, -1, trained_grid, trained_grid)
        resized = F.interpolate(patch_positions, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([table[:1], resized.reshape(table.shape[1], grid * grid).T])


class _Vision(nn.Module):
    def __init__(self, embeddings: _Embeddings, encoder: _Encoder, width: int, eps: float) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.pre_layrnorm = nn.LayerNorm(width, eps=eps)  # sic: the Hugging Face name
        self.encoder = encoder
        self.post_layernorm = nn.LayerNorm(width, eps=eps)


class FrozenVisionTower(nn.Module):
    """A frozen copy of a CLIP vision transformer: normalised pixels `[N, 3, S, S]` -> embeddings `[N, P]`.

    `FrozenVisionTower(source)` copies, as float32 tensors that never require grad, the weights of
    `source`, a CLIP vision module in the Hugging Face layout (ComfyUI's `CLIPVisionModelProjection`):
    class-token ViTs such as ViT-L/14, ViT-H/14, ViT-bigG/14, at 224 or 336 pixels. Sizes come from the
    weights' shapes; the head count and the MLP activation from the source's first layer
    (`self_attn.heads` or `.num_heads`, `mlp.activation` or `.activation_fn`). Construct it outside
    `torch.inference_mode()`.

    The embedding is ComfyUI's `image_embeds`: the class token after the final layer norm, through the
    visual projection (P = projection width; the hidden width when the model has no projection). Any
    side S that is a multiple of the patch size works: away from the trained size the patch position
    table is resampled bicubically, cheaper (the cost grows with the (S / patch)^2 tokens) at some loss
    of fidelity.
    """

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        state = _tower_state(source)
        width, _, patch_size, _ = state["vision_model.embeddings.patch_embedding.weight"].shape
        positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        first_layer = source.vision_model.encoder.layers[0]
        heads, activation = _head_count(first_layer), _activation(first_layer)
        eps = getattr(first_layer.layer_norm1, "eps", 1e-5)
        with torch.device("meta"):  # shapes only: the weights are assigned from `state` below
            layers = [_EncoderLayer(width, heads, _mlp_width(state, index), activation, eps)
                      for index in range(_layer_count(state))]
            self.vision_model = _Vision(_Embeddings(width, patch_size, positions), _Encoder(layers), width, eps)
            self.visual_projection = _projection(state, width)
        self.load_state_dict({name: tensor.detach().to(torch.float32, copy=True) for name, tensor in state.items()},
                             strict=True, assign=True)
        self.requires_grad_(False)
        self.eval()
        self.patch_size = patch_size
        self.trained_image_size = math.isqrt(positions - 1) * patch_size

    @property
    def embedding_size(self) -> int:
        """P, the length of one image embedding."""
        projection = self.visual_projection
        return self.vision_model.post_layernorm.normalized_shape[0] if projection is None else projection.out_features

    def input_size(self, image_size: int | None) -> int:
        """The input side S for a requested `image_size`: rounded down to a multiple of the patch size, the
        trained size for None."""
        if image_size is None:
            return self.trained_image_size
        check_whole_number("CLIP image size", image_size, minimum=self.patch_size)
        return image_size - image_size % self.patch_size

    def forward(self, pixels: Tensor) -> Tensor:
        """Embeddings `[N, P]` (in the tower's dtype) of normalised pixels `[N, 3, S, S]`."""
        vision = self.vision_model
        tokens = vision.pre_layrnorm(vision.embeddings(pixels.to(vision.embeddings.class_embedding.dtype)))
        for layer in vision.encoder.layers:
            tokens = layer(tokens)
        pooled = vision.post_layernorm(tokens[:, 0])
        return pooled if self.visual_projection is None else self.visual_projection(pooled)


def _tower_state(source: nn.Module) -> dict[str, Tensor]:
    """The vision tower's weights from `source`'s state dict (other heads, e.g. LLaVA's projector, left out)."""
    state = {name: tensor for name, tensor in source.state_dict().items() if name.startswith(_TOWER_PREFIXES)}
    if "vision_model.embeddings.class_embedding" not in state:
        raise ValueError(
            "This CLIP_VISION model is not a CLIP vision transformer with a class token (SigLIP and DINOv2 "
            "image encoders are not supported); load a CLIP vision model such as CLIP-ViT-L-14 or CLIP-ViT-H-14.")
    return state


def _layer_count(state: dict[str, Tensor]) -> int:
    return len({name.split(".")[3] for name in state if name.startswith("vision_model.encoder.layers.")})


def _mlp_width(state: dict[str, Tensor], layer: int) -> int:
    return state[f"vision_model.encoder.layers.{layer}.mlp.fc1.weight"].shape[0]


def _head_count(layer: nn.Module) -> int:
    attention = layer.self_attn
    heads = getattr(attention, "heads", None) or getattr(attention, "num_heads", None)
    if not isinstance(heads, int):
        raise ValueError("Cannot read the attention head count of this CLIP vision model.")
    return heads


def _activation(layer: nn.Module) -> Activation:
    activation = getattr(layer.mlp, "activation", None) or getattr(layer.mlp, "activation_fn", None)
    if not callable(activation):
        raise ValueError("Cannot read the MLP activation of this CLIP vision model.")
    return activation


def _projection(state: dict[str, Tensor], width: int) -> nn.Linear | None:
    weight = state.get("visual_projection.weight")
    return None if weight is None else nn.Linear(width, weight.shape[0], bias=False)


class ClipVisionEmbedder(Embedder):
    """The CLIP image embedding of the decoded latent: `[N, C, H, W] -> [N, P]`, unit length.

    Steps, all differentiable with respect to the latents:
    1. when the decoder upscales (TAESD), the latents are first area-averaged down so that the decoded
       image's short side is about the CLIP input size S (decoding 512 pixels to look at 224 would
       cost five times more);
    2. decode to RGB in about 0..1 (not clipped, so the gradient never vanishes where a pixel saturates);
    3. as ComfyUI's `clip_preprocess`: scale the short side to S (bicubic, antialiased), crop the centre
       S x S, subtract CLIP's mean and divide by its standard deviation;
    4. the tower's image embedding, divided by its length (CLIP embeddings are compared by angle).

    mean, std: CLIP's per-channel pixel statistics (3 numbers each); image_size: S, None for the size
    the tower was trained at (see `FrozenVisionTower.input_size`).
    """

    description = "Content: what the image shows, as your CLIP vision model sees the predicted image."
    title = "CLIP vision"

    def __init__(self, decoder: ImageDecoder, tower: FrozenVisionTower, mean: Sequence[float],
                 std: Sequence[float], image_size: int | None = None) -> None:
        super().__init__(latent_channels=decoder.latent_channels)
        self.decoder = decoder
        self.tower = tower
        self.image_size = tower.input_size(image_size)
        self.register_buffer("pixel_mean", _channel_statistic(mean, "mean"))
        self.register_buffer("pixel_std", _channel_statistic(std, "standard deviation"))

    def embed(self, latents: Tensor, sigma: Tensor | None) -> Tensor:
        size = self.image_size
        rgb = self.decoder(shrink_for_decoder(latents, self.decoder.upscale, size))
        pixels = (center_crop_resize(rgb, size) - self.pixel_mean.view(3, 1, 1)) / self.pixel_std.view(3, 1, 1)
        return F.normalize(self.tower(pixels), dim=1).to(latents.dtype)

    def feature_size(self, channels: int, height: int, width: int) -> int:
        return self.tower.embedding_size


def shrink_for_decoder(latents: Tensor, upscale: int, image_size: int) -> Tensor:
    """Latents `[N, C, H, W]` area-averaged down so that `upscale * min(H, W)` is about `image_size`
    (rounded up); unchanged when they are that small already."""
    height, width = latents.shape[-2:]
    short_side = -(-image_size // upscale)
    if min(height, width) <= short_side:
        return latents
    scale = short_side / min(height, width)
    return F.interpolate(latents, size=(max(1, round(height * scale)), max(1, round(width * scale))), mode="area")


def center_crop_resize(images: Tensor, size: int) -> Tensor:
    """Images `[N, 3, h, w]` with the short side scaled to `size` (bicubic, antialiased) and the centre
    `size` x `size` cropped, as ComfyUI's `clip_preprocess` does (without its 8-bit rounding)."""
    height, width = images.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        images = F.interpolate(images, size=(round(height * scale), round(width * scale)), mode="bicubic",
                               antialias=True, align_corners=False)
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top:top + size, left:left + size]


def _channel_statistic(values: Sequence[float], what: str) -> Tensor:
    statistic = torch.as_tensor(values, dtype=torch.float32).detach().clone()
    if statistic.shape != (3,) or not torch.isfinite(statistic).all():
        raise ValueError(f"CLIP's pixel {what} must be 3 finite numbers (R, G, B); got {values!r}.")
    if what == "standard deviation" and not (statistic > 0).all():
        raise ValueError(f"CLIP's pixel standard deviation must be positive; got {values!r}.")
    return statistic
