"""Pretrained pipelines: Stable Diffusion from the Hugging Face hub (by id and revision) or a local folder.

Loading never hangs offline: the local hub cache is tried first; a download is attempted only when the
hub is not switched off (``HF_HUB_OFFLINE``), with short timeouts, and any failure becomes a
:class:`ModelUnavailableError` naming the id and how to pass a local folder instead.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.api.model import (
    LoadedModel,
    ModelSpec,
    ModelUnavailableError,
    SamplerDefaults,
)
from benchmark.api.registry import MODELS
from benchmark.hashing import file_hash, stable_hash
from benchmark.models.base import prepare_pipeline

log = logging.getLogger(__name__)

# Only what a StableDiffusionPipeline needs; skips the .ckpt / non-ema / flax duplicates of SD repos.
ALLOW_PATTERNS = ["model_index.json", "*/config.json", "*/*.txt", "*/*.json", "*/*.safetensors"]


def fingerprint_folder(folder: Path) -> str:
    """A content identity of a pipeline folder that is cheap for multi-GB weights: every file's relative
    name and size, plus the hash of every small file and of the first MiB of every weight file."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = path.stat().st_size
        if size <= (1 << 20):
            digest = file_hash(path)
        else:
            with path.open("rb") as handle:
                digest = stable_hash(handle.read(1 << 20).hex())
        parts.append((rel, size, digest))
    return stable_hash(parts)


def load_pipeline_folder(folder: Path, device: torch.device, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise ModelUnavailableError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json). Pass a folder written by "
            "`StableDiffusionPipeline.save_pretrained`."
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, torch_dtype=dtype, local_files_only=True
    )
    return prepare_pipeline(pipe, device, dtype)


class HubModel(ModelSpec):
    """A Stable Diffusion pipeline on the Hugging Face hub.

    A subclass declares only its ``hub_id``: its name is the one it is registered under and its description
    the first line of its docstring (what ``benchmark list models`` prints, read without importing it).
    """

    hub_id: ClassVar[str] = ""
    revision: ClassVar[str] = "main"
    default_tasks: tuple[str, ...] = ("nudity",)
    defaults: SamplerDefaults = SamplerDefaults()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "description" not in cls.__dict__ and cls.__doc__:
            cls.description = cls.__doc__.strip().splitlines()[0]

    def snapshot(self, revision: str) -> Path:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(self.hub_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                          local_files_only=True))
        except Exception as cached_error:  # not in the cache: maybe download
            if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
                raise self.unavailable(revision, "HF_HUB_OFFLINE is set and it is not cached") from cached_error
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
        try:
            return Path(snapshot_download(self.hub_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
        except Exception as error:
            raise self.unavailable(revision, f"download failed: {type(error).__name__}: {error}") from error

    def check_available(self, revision: str | None = None) -> None:
        """Offline and not in the cache: say so now, not after the run was planned."""
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes"):
            return  # load() may still download it
        from huggingface_hub import snapshot_download

        revision = revision or self.revision
        try:
            snapshot_download(self.hub_id, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=True)
        except (OSError, ValueError) as error:  # LocalEntryNotFoundError (not cached), HFValidationError (bad id)
            raise self.unavailable(revision, "HF_HUB_OFFLINE is set and it is not cached") from error

    def unavailable(self, revision: str, why: str) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"Model '{self.name}' ({self.hub_id} @ {revision}) is not available: {why}. Either download it "
            f"where the hub is reachable (`huggingface-cli download {self.hub_id} --revision {revision}`) "
            f"and copy the cache here, or save the pipeline to a folder and pass `--model /path/to/folder`."
        )

    def load(self, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> LoadedModel:
        revision = revision or self.revision
        folder = self.snapshot(revision)
        pipe = load_pipeline_folder(folder, device, dtype)
        # The snapshot folder is named after the commit it resolved to: that is the pin we record.
        commit = folder.name
        key = stable_hash({"hub_id": self.hub_id, "commit": commit})
        return LoadedModel(self.name, key, pipe, device, dtype, self.defaults,
                           {"hub_id": self.hub_id, "revision": revision, "commit": commit})


@MODELS.register("folder")
@dataclass(kw_only=True)
class LocalFolderModel(ModelSpec):
    """A local diffusers pipeline folder: pass its path as ``--model /path/to/folder``."""

    folder: Path
    name: str = ""
    description: str = "A local diffusers pipeline folder: pass its path as --model /path/to/folder"
    default_tasks: tuple[str, ...] = ("nudity",)
    defaults: SamplerDefaults = SamplerDefaults()

    def __post_init__(self) -> None:
        self.name = self.name or self.folder.name
        index = self.folder / "model_index.json"
        if index.is_file():
            # SD 2.x base models sample at 768 when their UNet says so; read the size from the config.
            unet_config = self.folder / "unet" / "config.json"
            vae_config = self.folder / "vae" / "config.json"
            if unet_config.is_file() and vae_config.is_file():
                sample = json.loads(unet_config.read_text()).get("sample_size", 64)
                blocks = len(json.loads(vae_config.read_text()).get("block_out_channels", [0, 0, 0, 0]))
                size = int(sample) * 2 ** (blocks - 1)
                self.defaults = SamplerDefaults(50, 7.5, size, size)

    def check_available(self, revision: str | None = None) -> None:
        if not self.folder.is_dir():
            raise ModelUnavailableError(f"--model {self.folder}: no such folder")
        if not (self.folder / "model_index.json").is_file():
            raise ModelUnavailableError(f"--model {self.folder}: not a diffusers pipeline folder (no model_index.json); "
                                        "save one with pipeline.save_pretrained(folder)")

    def load(self, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> LoadedModel:
        self.check_available(revision)
        pipe = load_pipeline_folder(self.folder, device, dtype)
        key = stable_hash({"folder_fingerprint": fingerprint_folder(self.folder)})
        return LoadedModel(self.name, key, pipe, device, dtype, self.defaults,
                           {"folder_name": self.folder.name, "fingerprint": key})
