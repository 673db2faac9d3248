"""The model interface: a registered spec loads a diffusers ``StableDiffusionPipeline`` into a :class:`LoadedModel`.

Register a spec with ``@MODELS.register("name")`` on its class in ``benchmark/models/``."""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.api.errors import ModelUnavailableError, UserError
from benchmark.api.registry import MODELS
from benchmark.hashing import stable_hash

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    # The weights' identity whatever the dtype (``key`` names the dtype too, see keyed_by_dtype): what a
    # shipped artifact trained for these weights is matched against.
    weights_key: str = ""

    def __post_init__(self) -> None:
        self.weights_key = self.weights_key or self.key

    @property
    def tokenizer_max_length(self) -> int:
        return int(self.pipe.tokenizer.model_max_length)


def keyed_by_dtype(model: LoadedModel) -> LoadedModel:
    """``model`` with a key that also names its dtype when that is not fp32.

    Everything computed from the model (prepared defenses, adversarial prompts, images, and in-process caches
    keyed by the model) depends on the precision it ran in, so a bf16 run must not reuse an fp32 run's cells
    or the other way round. fp32 keys stay the model's own, so existing fp32 stores stay valid.
    """
    if model.dtype == torch.float32:
        return model
    name = next(k for k, v in DTYPES.items() if v == model.dtype)
    return dataclasses.replace(model, key=stable_hash({"model": model.key, "dtype": name}), weights_key=model.key)


class ModelSpec(ABC):
    """A registered model. Subclasses implement :meth:`load`."""

    name: str = ""
    description: str = ""
    default_tasks: tuple[str, ...] = ()
    defaults: SamplerDefaults = SamplerDefaults()

    @abstractmethod
    def load(self, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> LoadedModel: ...

    def check_available(self, revision: str | None = None) -> None:
        """Raise :class:`ModelUnavailableError` (saying how to provide the weights) when :meth:`load` cannot
        succeed here; cheap, loads nothing. Called when the run is resolved, before any other check.
        The default trusts :meth:`load` (the shipped and random models are always there)."""
        return None



def get_model_spec(name_or_path: str) -> ModelSpec:
    """A registered model by name, or a local pipeline folder (the ``folder`` model) by path."""
    if name_or_path in MODELS and name_or_path != "folder":
        spec = MODELS.get(name_or_path)
        return spec() if isinstance(spec, type) else spec
    if name_or_path == "folder":
        raise UserError("model 'folder' takes the folder's path: pass --model /path/to/pipeline-folder")
    path = Path(name_or_path)
    if path.exists() or "/" in name_or_path or name_or_path.startswith("."):
        return MODELS.get("folder")(folder=path)
    MODELS.get(name_or_path)  # raises with a did-you-mean
    raise AssertionError("unreachable")


__all__ = ["DTYPES", "LoadedModel", "ModelSpec", "ModelUnavailableError", "SamplerDefaults", "get_model_spec",
           "keyed_by_dtype", "resolve_device", "resolve_dtype"]
