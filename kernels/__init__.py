"""Pure torch maths of particle repulsion: kernels, bandwidth rule, batch repulsion force, log-Vendi.

No ComfyUI imports here (see DESIGN.md).
"""
from .repulsion import Embedder, Repulsion, repulsion, repulsion_force
from .similarity import (
    KERNEL_NAMES,
    MEDIAN,
    Bandwidth,
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
    "KERNEL_NAMES",
    "MEDIAN",
    "Bandwidth",
    "CosineKernel",
    "Embedder",
    "IMQKernel",
    "Kernel",
    "RBFKernel",
    "Repulsion",
    "log_vendi_entropy",
    "log_vendi_gradient",
    "make_kernel",
    "median_bandwidth",
    "repulsion",
    "repulsion_force",
    "squared_distances",
    "unit_rows",
]
