"""Pure torch maths of particle repulsion: kernels, diversity objectives, batch repulsion force, log-Vendi.

No ComfyUI imports here (see DESIGN.md).
"""
from .objectives import (
    OBJECTIVE_NAMES,
    BatchSimilarity,
    KernelSum,
    LogVendiEntropy,
    Objective,
    make_objective,
)
from .repulsion import Embedder, NonFiniteFeatures, Repulsion, repulsion, repulsion_force
from .similarity import (
    DEFAULT_COLLISION_TEMPERATURE,
    KERNEL_NAMES,
    MEDIAN,
    Bandwidth,
    CollisionKernel,
    CosineKernel,
    IMQKernel,
    Kernel,
    RBFKernel,
    make_kernel,
    median_bandwidth,
    squared_distances,
    unit_rows,
)
from .vendi import log_vendi_entropy, log_vendi_gradient

__all__ = [
    "DEFAULT_COLLISION_TEMPERATURE",
    "KERNEL_NAMES",
    "MEDIAN",
    "OBJECTIVE_NAMES",
    "Bandwidth",
    "BatchSimilarity",
    "CollisionKernel",
    "CosineKernel",
    "Embedder",
    "IMQKernel",
    "Kernel",
    "KernelSum",
    "LogVendiEntropy",
    "NonFiniteFeatures",
    "Objective",
    "RBFKernel",
    "Repulsion",
    "log_vendi_entropy",
    "log_vendi_gradient",
    "make_kernel",
    "make_objective",
    "median_bandwidth",
    "repulsion",
    "repulsion_force",
    "squared_distances",
    "unit_rows",
]
