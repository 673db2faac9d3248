"""Image features for the set distances of :mod:`benchmark.image_quality` (FD / KID / CMMD).

* ``clip-mini``: sd-mini's own CLIP image tower (shipped weights, offline), L2-normalised, 128-d. On
  sd-mini every distance uses it: "FD" there is a Frechet distance in clip-mini space, not an FID.
* ``inception``: Inception-v3 pool3 (2048-d) with the FID weights (the TF 2015-12-05 graph ported by
  torch-fidelity), through ``torchmetrics``' ``NoTrainInceptionV3``: FD on it is FID, KID is KID. Needs
  ``pip install torch-fidelity`` and the weights file in torch's hub cache; never downloaded here.
* ``clip``: a transformers CLIP's projected image embeddings, L2-normalised (CMMD's space). The paper's
  model is ``openai/clip-vit-large-patch14-336``; loaded from a folder or the local Hugging Face cache by
  :func:`benchmark.judges.clip_loading.load_clip`, whose error says what to download offline.

Each extractor has an ``identity`` (name, model, weights) that keys the feature cache of the reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from benchmark.api.errors import JudgeLoadError
from benchmark.hashing import file_hash
from benchmark.judges.clip_loading import load_clip, resolve_device
from benchmark.judges.mini_world_judges import _clip_dir, _load, _pixels, _weights_hash, check_weights

CMMD_CLIP_MODEL = "openai/clip-vit-large-patch14-336"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"


class FeatureExtractor(Protocol):
    name: str
    identity: str  # what the features depend on: extractor, model, weights hash

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor: ...  # (n, d) float32 on CPU


class ClipMiniFeatures:
    """sd-mini's CLIP image tower (the one the clip-mini judge scores with)."""

    name = "clip-mini"

    def __init__(self, device: str | None = "cpu", batch_size: int = 256) -> None:
        from benchmark.mini_world import ClipMini

        folder = _clip_dir()
        check_weights("clip-mini features", folder, ("config.json", "model.safetensors", "tokenizer"))
        self.clip = _load("clip-mini features", folder, lambda: ClipMini.load(device=resolve_device(device),
                                                                             path=folder))
        self.batch_size = batch_size
        self.identity = f"clip-mini:{_weights_hash(folder)}"

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        chunks = [self.clip.encode_image(_pixels(images[i:i + self.batch_size])).float()
                  for i in range(0, len(images), self.batch_size)]
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu() if chunks else torch.empty(0, 128)


class ClipFeatures:
    """A transformers CLIP's L2-normalised image embeddings (CMMD)."""

    name = "clip"

    def __init__(self, model: str = CMMD_CLIP_MODEL, device: str | None = "cpu", batch_size: int = 32,
                 allow_download: bool | None = None) -> None:
        self.encoder = load_clip(model, device=device, allow_download=allow_download, judge="cmmd features")
        self.batch_size = batch_size
        self.identity = f"clip:{self.encoder.version}:{self.encoder.weights_hash}"

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        chunks = [self.encoder.encode_images(images[i:i + self.batch_size]).float().cpu()
                  for i in range(0, len(images), self.batch_size)]
        return torch.cat(chunks)


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The FID Inception weights: ``path``, else torch's hub cache; a :class:`JudgeLoadError` saying how to get
    them when absent (nothing is downloaded)."""
    target = Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if not target.is_file():
        raise JudgeLoadError(
            f"FID/KID need the Inception-v3 FID weights at {target}, which is missing. On a machine with "
            f"network: `curl -L -o {target} {INCEPTION_WEIGHTS_URL}` (torch-fidelity's file; "
            f"`pip install torch-fidelity` too), then copy it here.")
    return target


class InceptionFeatures:
    """Inception-v3 pool3 features with the FID weights (torchmetrics' NoTrainInceptionV3)."""

    name = "inception"

    def __init__(self, weights: str | Path | None = None, device: str | None = "cpu", batch_size: int = 50) -> None:
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as error:  # pragma: no cover - torchmetrics is a dependency
            raise JudgeLoadError(f"FID/KID need torchmetrics ({error}): pip install torchmetrics") from None
        if not _TORCH_FIDELITY_AVAILABLE:
            raise JudgeLoadError("FID/KID on SD models need torch-fidelity's Inception: `pip install torch-fidelity`")
        path = inception_weights_path(weights)
        self.device = resolve_device(device)
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path)).to(self.device)
        self.batch_size = batch_size
        self.identity = f"inception-2048:{file_hash(path)}"

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([np.asarray(image.convert("RGB")) for image in images[start:start + self.batch_size]])
            pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)  # uint8; resized to 299 inside
            chunks.append(self.net(pixels).float().cpu())
        return torch.cat(chunks)
