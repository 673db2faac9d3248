"""Helpers shared by the built-in model specs (the interface itself is :mod:`benchmark.api.model`)."""

from __future__ import annotations

from typing import Any

import torch


def prepare_pipeline(pipe: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move to device/dtype, freeze, silence the per-call progress bar (the harness shows its own)."""
    # Cast only what differs: diffusers warns (rightly) about blanket casts of loaded models.
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    pipe = pipe.to(device)
    for module_name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, module_name, None)
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
