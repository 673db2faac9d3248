"""Shared machinery of weight-edit defenses (ESD, UCE, checkpoints): select parameters, save an edit as a
safetensors file inside the artifact directory, apply it to the shared base pipeline and undo it on close.

An edit is a flat ``{"unet.<param>" | "text_encoder.<param>": tensor}`` mapping. It is stored either as a
*delta* (edited minus base: small and meaningful for trained edits) or as full *weights* (checkpoints).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from benchmark.api.defense import DefendedPipeline
from benchmark.api.model import get_model_spec

log = logging.getLogger(__name__)

COMPONENTS = ("unet", "text_encoder")


class ArtifactPathError(ValueError):
    """An artifact file that resolves outside its artifact directory (e.g. through a symlink)."""


def artifact_file(artifact_dir: Path, name: str) -> Path:
    """``artifact_dir / name``, refusing a name or link that leads out of the artifact directory: an
    artifact directory is trusted only for what lies inside it."""
    root = Path(artifact_dir).resolve()
    candidate = (root / name).resolve()
    if root not in candidate.parents:
        raise ArtifactPathError(f"artifact file {name!r} resolves to {candidate}, outside {root}; refusing it")
    return candidate


def cross_attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every attention module of the UNet that attends to the text (keys/values from the prompt
    embedding). On SD these are the ``attn2`` blocks; on a UNet with ``only_cross_attention`` some
    ``attn1`` blocks are cross-attention too, so the test is the module's own flag, not its name."""
    from diffusers.models.attention_processor import Attention

    return {name: module for name, module in unet.named_modules()
            if isinstance(module, Attention) and module.is_cross_attention}


def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by state-dict name (what a checkpoint holds)."""
    return {**dict(module.named_buffers()), **dict(module.named_parameters())}


def parameter(pipe, key: str, cache: dict[str, dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
    """The pipeline's tensor named ``<component>.<state-dict name>``."""
    component, _, name = key.partition(".")
    if component not in COMPONENTS:
        raise KeyError(f"edit key {key!r} must start with one of {COMPONENTS}")
    cache = {} if cache is None else cache
    if component not in cache:
        cache[component] = tensors_of(getattr(pipe, component))
    if name not in cache[component]:
        raise KeyError(f"edit key {key!r}: {component} has no parameter {name!r}")
    return cache[component][name]


def save_edit(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write atomically (temporary file, then rename): a killed prepare never leaves half a delta."""
    import os
    import tempfile

    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata or {}))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_edit(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class WeightEditPipeline(DefendedPipeline):
    """The base pipeline with some parameters replaced. The originals are kept (on their device) and
    copied back in :meth:`close`, since the base pipeline is shared by every defense of a run.

    ``edit`` holds either deltas (``as_delta=True``: added to the base) or full values.
    """

    ACTIVE = "_unlearn_arena_active_edit"

    def __init__(self, model, defense, task, edit: Mapping[str, torch.Tensor], *, as_delta: bool):
        super().__init__(model, defense, task)
        active = getattr(self.pipe, self.ACTIVE, None)
        if active is not None:
            raise RuntimeError(f"another weight edit ({active}) is still applied to this pipeline; close() it first")
        self._originals: dict[str, torch.Tensor] = {}
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        try:
            with torch.no_grad():
                for key, value in edit.items():
                    param = parameter(self.pipe, key, self._cache)
                    if tuple(param.shape) != tuple(value.shape):
                        raise ValueError(f"edit {key!r} has shape {tuple(value.shape)}, the model's is "
                                         f"{tuple(param.shape)}")
                    self._originals[key] = param.detach().clone()
                    new = value.to(param.device, torch.float32)
                    if as_delta:
                        new = param.detach().float() + new
                    param.copy_(new.to(param.dtype))
        except BaseException:
            self._restore()
            raise
        setattr(self.pipe, self.ACTIVE, getattr(defense, "name", None) or type(defense).__name__)
        # The unconditional embedding depends on the text encoder, which an edit may have changed.
        self._uncond_cache = None

    @property
    def edited_keys(self) -> list[str]:
        return list(self._originals)

    def _restore(self) -> None:
        with torch.no_grad():
            for key, original in self._originals.items():
                parameter(self.pipe, key, self._cache).copy_(original)
        self._originals = {}

    def close(self) -> None:
        self._restore()
        if hasattr(self.pipe, self.ACTIVE):
            delattr(self.pipe, self.ACTIVE)
        self._uncond_cache = None


# ---------------------------------------------------------------------------------------------- export
def export_unet(pipe, delta_file: Path, out: Path) -> int:
    """Write the base UNet plus a saved ESD/UCE delta as a full UNet state dict (safetensors): the form in
    which such models are published, and which ``checkpoint`` loads. Returns the number of edited tensors."""
    from safetensors.torch import save_file

    delta = load_edit(delta_file)
    foreign = [k for k in delta if not k.startswith("unet.")]
    if foreign:
        raise ValueError(f"export: the delta edits more than the UNet ({foreign[:3]}); only UNet edits export")
    state = {k: v.detach().cpu().float().clone() for k, v in pipe.unet.state_dict().items()}
    for key, value in delta.items():
        state[key.removeprefix("unet.")] += value
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return len(delta)


def main(argv: list[str] | None = None) -> None:
    """``python -m defenses.weight_edit export --model sd-mini --delta <artifact>/esd_delta.safetensors --out f``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m defenses.weight_edit", description=main.__doc__)
    parser.add_argument("command", choices=["export"])
    parser.add_argument("--model", default="sd-mini")
    parser.add_argument("--delta", required=True, type=Path, help="an esd_delta / uce_delta safetensors file")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    model = get_model_spec(args.model).load(torch.device("cpu"), torch.float32)
    edited = export_unet(model.pipe, args.delta, args.out)
    log.info("wrote %s (%d edited tensors)", args.out, edited)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
