"""Builders for API-format prompts (the `{node_id: {class_type, inputs}}` graphs POST /prompt takes)."""
from __future__ import annotations

from dataclasses import dataclass, field

CHECKPOINT, POSITIVE, NEGATIVE, LATENT = "checkpoint", "positive", "negative", "latent"
MODEL_OUTPUT, CLIP_OUTPUT, VAE_OUTPUT = 0, 1, 2

# The repulsion widgets at the nodes' defaults, but switched off (strength 0): tests say what they change.
REPULSION_DEFAULTS = {"strength": 0.0, "strength_mode": "relative", "space": "denoised", "kernel": "rbf",
                      "bandwidth": 0.0, "start": 0.0, "end": 1.0, "objective": "log_vendi"}


def widget_defaults(declared_inputs: dict) -> dict:
    """{name: default} of every widget a node declares, from its `INPUT_TYPES()` or its `/object_info`
    "input" (the same shape): required and optional inputs with a default, combos without one at their
    first option. Sockets (MODEL, EMBEDDER, ...) have neither and are left out."""
    defaults = {}
    for name, (kind, *options) in {**declared_inputs["required"], **declared_inputs.get("optional", {})}.items():
        spec = options[0] if options else {}
        choices = kind if isinstance(kind, list) else spec.get("options") if kind == "COMBO" else None
        if "default" in spec:
            defaults[name] = spec["default"]
        elif choices:
            defaults[name] = choices[0]
    return defaults


@dataclass
class Graph:
    """An API-format prompt under construction; starts with the tiny checkpoint, two prompts and a latent."""

    checkpoint: str
    batch_size: int = 4
    width: int = 64
    height: int = 64
    prefix: str = "tests"
    nodes: dict = field(default_factory=dict)

    prompt: str = "a lighthouse at dusk"
    negative_prompt: str = "blurry"
    cfg: float = 5.0

    def __post_init__(self):
        self.add(CHECKPOINT, "CheckpointLoaderSimple", ckpt_name=self.checkpoint)
        self.add(POSITIVE, "CLIPTextEncode", clip=[CHECKPOINT, CLIP_OUTPUT], text=self.prompt)
        self.add(NEGATIVE, "CLIPTextEncode", clip=[CHECKPOINT, CLIP_OUTPUT], text=self.negative_prompt)
        self.add(LATENT, "EmptyLatentImage", width=self.width, height=self.height, batch_size=self.batch_size)

    def add(self, node_id: str, class_type: str, **inputs) -> str:
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def sampler_inputs(self, sampler_name: str, scheduler: str, seed: int, steps: int, latent: str) -> dict:
        return {"model": [CHECKPOINT, MODEL_OUTPUT], "seed": seed, "steps": steps, "cfg": self.cfg,
                "sampler_name": sampler_name, "scheduler": scheduler, "positive": [POSITIVE, 0],
                "negative": [NEGATIVE, 0], "latent_image": [latent, 0], "denoise": 1.0}

    def stock_ksampler(self, node_id: str, sampler_name="euler", scheduler="normal", seed=7, steps=3,
                       latent=LATENT, model=None) -> str:
        inputs = self.sampler_inputs(sampler_name, scheduler, seed, steps, latent)
        if model is not None:
            inputs["model"] = [model, 0]
        return self.add(node_id, "KSampler", **inputs)

    def repulsive_ksampler(self, node_id: str, sampler_name="euler", scheduler="normal", seed=7, steps=3,
                           latent=LATENT, embedder=None, model=None, **repulsion) -> str:
        inputs = {**self.sampler_inputs(sampler_name, scheduler, seed, steps, latent),
                  **REPULSION_DEFAULTS, **repulsion}
        if model is not None:
            inputs["model"] = [model, 0]
        if embedder is not None:
            inputs["embedder"] = [embedder, 0]
        return self.add(node_id, "ParticleRepulsionKSampler", **inputs)

    def save_latent(self, source: str) -> str:
        return self.add(f"latent_{source}", "SaveLatent", samples=[source, 0], filename_prefix=f"{self.prefix}/{source}")

    def save_image(self, source: str) -> str:
        decoded = self.add(f"decode_{source}", "VAEDecode", samples=[source, 0], vae=[CHECKPOINT, VAE_OUTPUT])
        return self.add(f"image_{source}", "SaveImage", images=[decoded, 0], filename_prefix=f"{self.prefix}/{source}")
