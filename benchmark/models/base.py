"""Model specs: how a named model is loaded into a diffusers ``StableDiffusionPipeline``."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModelUnavailableError(RuntimeError):
    """The model's weights cannot be had here; the message says how to provide them."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(f"--device {device} was asked for but CUDA is not available here")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere (CPU fp16 convolutions are slow or missing), unless overridden."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


@dataclass(frozen=True)
class SamplerDefaults:
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512


@dataclass
class LoadedModel:
    """A pipeline ready to sample, with the identity that enters every cell key."""

    name: str
    key: str  # content identity: name + revision or weights hash; never a path
    pipe: Any  # diffusers.StableDiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    defaults: SamplerDefaults
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_max_length(self) -> int:
        return int(self.pipe.tokenizer.model_max_length)


class ModelSpec(ABC):
    """A registered model. Subclasses implement :meth:`load`."""

    name: str = ""
    description: str = ""
    default_tasks: tuple[str, ...] = ()
    defaults: SamplerDefaults = SamplerDefaults()

    @abstractmethod
    def load(self, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> LoadedModel: ...


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
