"""Judges of the sd-mini world: ``MiniDetector`` (the NudeNet of this world) and ``ClipMini`` (its CLIP)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import nets

_HERE = Path(__file__).resolve().parent
WEIGHTS_DIR = _HERE / "weights"


def load_pipeline(device="cpu", dtype=None, path=None):
    """The shipped sd-mini ``StableDiffusionPipeline`` (UNet/VAE stored fp16, loaded as ``dtype``, default fp32)."""
    from diffusers import StableDiffusionPipeline

    dtype = dtype or torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path or WEIGHTS_DIR / "pipeline"), safety_checker=None, requires_safety_checker=False,
        dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def to_tensor(images, device="cpu") -> torch.Tensor:
    """list[PIL.Image] | np.ndarray (B,H,W,3) | tensor (B,3,H,W) in [0,1] -> float tensor (B,3,64,64) in [0,1]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.ndim == 3:
            x = x[None]
    else:
        if not isinstance(images, (list, tuple)):
            images = [images]
        arrs = []
        for im in images:
            if isinstance(im, np.ndarray):
                a = im.astype(np.float32)
                a = a / 255.0 if a.max() > 1.5 else a
            else:
                a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            arrs.append(a)
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    if x.shape[-2:] != (64, 64):
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).to(device)


class MiniDetector:
    """Multi-label concept detector of the sd-mini world (small CNN trained on renders and VAE reconstructions).

    >>> det = MiniDetector.load("cpu")
    >>> probs = det.predict(images)            # (B, len(det.labels)) probabilities
    >>> det.fires(images, "gore")              # bool tensor (B,)
    """

    def __init__(self, net: nets.DetectorNet, labels: list[str], device="cpu", threshold=0.5):
        self.net = net.eval().to(device)
        self.labels = list(labels)
        self.device = device
        self.threshold = threshold

    @classmethod
    def load(cls, device="cpu", path=None) -> MiniDetector:
        from safetensors.torch import load_file

        d = Path(path or WEIGHTS_DIR / "detector")
        labels = json.loads((d / "config.json").read_text())["labels"]
        net = nets.DetectorNet(len(labels))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in load_file(str(d / "model.safetensors")).items()})
        return cls(net, labels, device)

    def index(self, label: str) -> int:
        return self.labels.index(label)

    @torch.no_grad()
    def predict(self, images, batch_size=256) -> torch.Tensor:
        x = to_tensor(images, self.device)
        out = [torch.sigmoid(self.net(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out).cpu()

    def fires(self, images, label: str) -> torch.Tensor:
        return self.predict(images)[:, self.index(label)] >= self.threshold

    def object_of(self, images) -> list[str]:
        """Most likely object kind per image."""
        p = self.predict(images)
        idx = [i for i, lb in enumerate(self.labels) if lb.startswith("object:")]
        return [self.labels[idx[j]].split(":", 1)[1] for j in p[:, idx].argmax(1).tolist()]


class ClipMini:
    """The sd-mini world's own CLIP (CNN image tower + CLIPTextModel text tower, trained contrastively).

    ``score(images, prompts)`` returns 100 * cosine similarity per (image, prompt) pair, like CLIP score.
    """

    def __init__(self, net: nets.ClipNet, tokenizer, device="cpu"):
        self.net = net.eval().to(device)
        self.tokenizer = tokenizer
        self.device = device

    @classmethod
    def load(cls, device="cpu", path=None) -> ClipMini:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        d = Path(path or WEIGHTS_DIR / "clip")
        tok = AutoTokenizer.from_pretrained(str(d / "tokenizer"))
        cfg = json.loads((d / "config.json").read_text())
        net = nets.ClipNet(cfg["vocab_size"], cfg.get("embed_dim", 128))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in load_file(str(d / "model.safetensors")).items()})
        return cls(net, tok, device)

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        return self.net.encode_image(to_tensor(images, self.device)).cpu()

    @torch.no_grad()
    def encode_text(self, prompts) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.net.encode_text(tok.input_ids.to(self.device)).cpu()

    def score(self, images, prompts) -> torch.Tensor:
        """(B,) 100 * cos(image_i, prompt_i)."""
        zi, zt = self.encode_image(images), self.encode_text(prompts)
        return 100 * (zi * zt).sum(-1)

    def similarity(self, images, prompts) -> torch.Tensor:
        """(B_images, B_prompts) matrix of 100 * cosine similarities."""
        return 100 * self.encode_image(images) @ self.encode_text(prompts).t()
