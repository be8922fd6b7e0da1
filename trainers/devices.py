"""Choose the GPU a worker process trains on and the device and precision it uses."""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

GPU_IDS_VARIABLE = "CLARA_GPU_IDS"
VISIBLE_DEVICES_VARIABLE = "CUDA_VISIBLE_DEVICES"


def gpu_ids(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Return the GPU ids the workers share, from CLARA_GPU_IDS or else CUDA_VISIBLE_DEVICES."""
    for variable in (GPU_IDS_VARIABLE, VISIBLE_DEVICES_VARIABLE):
        value = environ.get(variable)
        if value is not None and value.strip():
            return [part.strip() for part in value.split(",") if part.strip()]
    return []


def pin_gpu(child_index: int, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Restrict a worker child to one GPU by setting CUDA_VISIBLE_DEVICES; call before torch touches CUDA."""
    ids = gpu_ids(environ)
    if not ids:
        return None
    if child_index < 0:
        raise ValueError(f"child_index must not be negative, got {child_index}")
    chosen = ids[child_index % len(ids)]
    environ[VISIBLE_DEVICES_VARIABLE] = chosen
    logger.info("Worker child %s uses GPU %s of %s.", child_index, chosen, ",".join(ids))
    return chosen


def training_device() -> str:
    """Return "cuda" when a CUDA GPU is usable, else "cpu"."""
    import torch  # Deferred so that pin_gpu can run before torch initialises CUDA.

    return "cuda" if torch.cuda.is_available() else "cpu"


def supports_bf16() -> bool:
    """Return whether the CUDA GPU supports bfloat16 training."""
    import torch

    # Emulated bf16 on pre-Ampere GPUs is far slower than float32, so it does not count.
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
