"""Every node the pack exports. IDs carry the `ParticleRepulsion` prefix and never change once shipped."""
from .clip_vision_embedder import CLIPVisionEmbedder
from .contextual import ContextualRepulsion
from .embedder_nodes import GramStyleEmbedder, LoadStyleEmbedder, RepulsionEmbedder
from .metric_nodes import DiversityCompare, DiversityMetric
from .sampler_nodes import RepulsionModelPatch, RepulsiveKSampler, RepulsiveSampler
from .style_training import StyleLatentsFromFolder, StyleLatentsFromPrompts, TrainStyleEmbedder

NODES = {
    "ParticleRepulsionKSampler": (RepulsiveKSampler, "Repulsive KSampler"),
    "ParticleRepulsionSampler": (RepulsiveSampler, "Repulsive Sampler"),
    "ParticleRepulsionModelPatch": (RepulsionModelPatch, "Repulsion (Model Patch)"),
    "ParticleRepulsionEmbedder": (RepulsionEmbedder, "Repulsion Embedder"),
    "ParticleRepulsionLoadStyleEmbedder": (LoadStyleEmbedder, "Load Style Embedder"),
    "ParticleRepulsionGramEmbedder": (GramStyleEmbedder, "Gram (Style) Embedder"),
    "ParticleRepulsionCLIPVisionEmbedder": (CLIPVisionEmbedder, "CLIP Vision Embedder"),
    "ParticleRepulsionStyleLatentsFromFolder": (StyleLatentsFromFolder, "Style Latents from Image Folder"),
    "ParticleRepulsionStyleLatentsFromPrompts": (StyleLatentsFromPrompts, "Style Latents from Prompts"),
    "ParticleRepulsionTrainStyleEmbedder": (TrainStyleEmbedder, "Train Style Embedder"),
    "ParticleRepulsionDiversityMetric": (DiversityMetric, "Diversity Metric"),
    "ParticleRepulsionDiversityCompare": (DiversityCompare, "Diversity Compare"),
    "ParticleRepulsionContextual": (ContextualRepulsion, "Contextual Repulsion (transformers)"),
}

NODE_CLASS_MAPPINGS = {node_id: node_class for node_id, (node_class, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: display_name for node_id, (_, display_name) in NODES.items()}
