"""The SafeRedir redirector network (Liu et al., 2026, arXiv 2601.08623), written for this project.

One small network reads the noisy latent ``z_t``, the timestep ``t`` and the conditional prompt embedding
``e`` (``seq x dim``) and returns

* ``logits``  (B, 2)       -- is this generation heading for the unsafe concept?
* ``delta``   (B, T, D)    -- a per-token redirection direction (low-rank head, gated per token)
* ``mask``    (B, T)       -- which tokens carry the concept
* ``alpha``   (B, T, 1)    -- how far to move each token, as a fraction of its norm

Layout (the same computation as the official release, so its checkpoints load through
:data:`OFFICIAL_KEY_MAP`; every size comes from :class:`RedirectorConfig`, so one class serves sd-mini,
SD 1.x (77 x 768) and SD 2.x (77 x 1024)):

    latent tower   3 residual conv blocks -> global average pool -> linear        (latent_features)
    time tower     sinusoidal(t) -> linear -> SiLU -> LayerNorm                  (time_features)
    joint          [latent_features, time_features]
    prompt reader  n single-query cross-attention heads over the prompt tokens, fused by a linear layer
    classifier     MLP([joint, mean-pooled prompt, prompt reader]) -> 2 logits
    delta head     MLP([joint, prompt reader]) per token -> low-rank (down, up) -> x sigmoid gate(e + pos)
    mask head      self-attention over the prompt tokens -> MLP -> sigmoid
    alpha head     MLP(e) -> sigmoid, per token

The redirection itself (what the edit does with these outputs) lives in :func:`redirect`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.api.errors import DataFileError


@dataclass(frozen=True)
class RedirectorConfig:
    """Sizes. ``latent_channels``, ``seq_len`` and ``prompt_dim`` come from the base model; the rest are
    widths. :meth:`official` gives the released SD 1.x network (14.6 M parameters)."""

    latent_channels: int = 4
    seq_len: int = 77
    prompt_dim: int = 768
    conv_widths: tuple[int, int, int] = (64, 128, 256)
    latent_features: int = 512
    time_sinusoid_dim: int = 320
    time_features: int = 64
    reader_heads: int = 4
    attention_scale_dim: int = 768  # the release divides attention scores by sqrt(768) whatever the width
    classifier_hidden: int = 256
    token_hidden: int = 512
    rank: int = 16
    mask_heads: int = 4
    mask_hidden: int = 128
    alpha_hidden: int = 256

    @classmethod
    def official(cls, seq_len: int = 77, prompt_dim: int = 768) -> RedirectorConfig:
        return cls(seq_len=seq_len, prompt_dim=prompt_dim)

    @classmethod
    def small(cls, latent_channels: int, seq_len: int, prompt_dim: int) -> RedirectorConfig:
        """A network sized so that it costs a few percent of a small UNet's step (sd-mini)."""
        return cls(latent_channels=latent_channels, seq_len=seq_len, prompt_dim=prompt_dim,
                   conv_widths=(16, 32, 64), latent_features=128, time_sinusoid_dim=64, time_features=32,
                   reader_heads=2, attention_scale_dim=prompt_dim, classifier_hidden=128, token_hidden=128,
                   rank=16, mask_heads=4, mask_hidden=64, alpha_hidden=64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RedirectorConfig:
        data = dict(data)
        data["conv_widths"] = tuple(data["conv_widths"])
        return cls(**data)


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The usual sinusoidal timestep embedding, [sin, cos] halves."""
    t = t.reshape(-1).float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResidualConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        return F.relu(h + self.skip(x))


class LatentTower(nn.Module):
    def __init__(self, cfg: RedirectorConfig):
        super().__init__()
        widths = (cfg.latent_channels, *cfg.conv_widths)
        self.blocks = nn.ModuleList(ResidualConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.proj = nn.Linear(cfg.conv_widths[-1], cfg.latent_features)
        self.dropout = nn.Dropout(0.2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            z = block(z)
        return self.dropout(F.relu(self.proj(z.mean(dim=(2, 3)))))


class TimeTower(nn.Module):
    def __init__(self, cfg: RedirectorConfig):
        super().__init__()
        self.sinusoid_dim = cfg.time_sinusoid_dim
        self.linear = nn.Linear(cfg.time_sinusoid_dim, cfg.time_features)
        self.norm = nn.LayerNorm(cfg.time_features)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.norm(F.silu(self.linear(timestep_sinusoid(t, self.sinusoid_dim))))


class SingleQueryHead(nn.Module):
    """One query (from the latent/time features) attending over the prompt tokens; a residual with the
    mean value keeps a summary of the whole prompt even when attention is peaked."""

    def __init__(self, joint_dim: int, prompt_dim: int, scale_dim: int):
        super().__init__()
        self.to_q = nn.Linear(joint_dim, prompt_dim)
        self.to_k = nn.Linear(prompt_dim, prompt_dim)
        self.to_v = nn.Linear(prompt_dim, prompt_dim)
        self.norm = nn.LayerNorm(prompt_dim)
        self.scale = scale_dim ** -0.5

    def forward(self, joint: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        q = self.to_q(joint).unsqueeze(1)
        k, v = self.to_k(prompt), self.to_v(prompt)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.norm((attn @ v).squeeze(1) + v.mean(dim=1))


class PromptReader(nn.Module):
    def __init__(self, cfg: RedirectorConfig, joint_dim: int):
        super().__init__()
        self.heads = nn.ModuleList(SingleQueryHead(joint_dim, cfg.prompt_dim, cfg.attention_scale_dim)
                                   for _ in range(cfg.reader_heads))
        self.fuse_linear = nn.Linear(cfg.reader_heads * cfg.prompt_dim, cfg.prompt_dim)
        self.fuse_norm = nn.LayerNorm(cfg.prompt_dim)

    def forward(self, joint: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.fuse_norm(self.fuse_linear(torch.cat([h(joint, prompt) for h in self.heads], dim=-1)))


class Classifier(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.dropout = nn.Dropout(0.2)
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(F.relu(self.hidden(x))))


class DeltaGenerator(nn.Module):
    """Per-token direction: an MLP of the joint/prompt-reader features, a low-rank (down, up) head with a
    learned scale, and a per-token sigmoid gate read from the token (plus a learned position)."""

    def __init__(self, cfg: RedirectorConfig, joint_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(joint_dim + cfg.prompt_dim, cfg.token_hidden)
        self.proj_out = nn.Linear(cfg.token_hidden, cfg.prompt_dim)
        self.down = nn.Linear(cfg.prompt_dim, cfg.rank, bias=False)
        self.up = nn.Linear(cfg.rank, cfg.prompt_dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.gate = nn.Linear(cfg.prompt_dim, 1)
        self.position = nn.Parameter(torch.randn(1, cfg.seq_len, cfg.prompt_dim))

    def forward(self, joint: torch.Tensor, read: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        seq = prompt.shape[1]
        features = torch.cat([joint, read], dim=-1).unsqueeze(1).expand(-1, seq, -1)
        base = self.proj_out(F.relu(self.proj_in(features)))
        delta = self.up(self.down(base)) * self.scale
        return delta * torch.sigmoid(self.gate(prompt + self.position[:, :seq]))


class MaskPredictor(nn.Module):
    def __init__(self, cfg: RedirectorConfig):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(cfg.prompt_dim, cfg.mask_heads, batch_first=True)
        self.hidden = nn.Linear(cfg.prompt_dim, cfg.mask_hidden)
        self.norm = nn.LayerNorm(cfg.mask_hidden)
        self.out = nn.Linear(cfg.mask_hidden, 1)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        h, _ = self.self_attn(prompt, prompt, prompt, need_weights=False)
        return torch.sigmoid(self.out(self.norm(F.relu(self.hidden(h)))).squeeze(-1))


class AlphaPredictor(nn.Module):
    def __init__(self, cfg: RedirectorConfig):
        super().__init__()
        self.hidden = nn.Linear(cfg.prompt_dim, cfg.alpha_hidden)
        self.out = nn.Linear(cfg.alpha_hidden, 1)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(F.relu(self.hidden(prompt))))


@dataclass
class RedirectorOutput:
    logits: torch.Tensor  # (B, 2)
    delta: torch.Tensor  # (B, T, D), already gated and multiplied by the mask
    mask: torch.Tensor  # (B, T)
    alpha: torch.Tensor  # (B, T, 1)

    @property
    def unsafe_probability(self) -> torch.Tensor:
        return self.logits.float().softmax(-1)[:, 1]


class Redirector(nn.Module):
    def __init__(self, cfg: RedirectorConfig):
        super().__init__()
        self.cfg = cfg
        joint_dim = cfg.latent_features + cfg.time_features
        self.latent_tower = LatentTower(cfg)
        self.time_tower = TimeTower(cfg)
        self.prompt_reader = PromptReader(cfg, joint_dim)
        self.classifier = Classifier(joint_dim + 2 * cfg.prompt_dim, cfg.classifier_hidden)
        self.delta_generator = DeltaGenerator(cfg, joint_dim)
        self.mask_predictor = MaskPredictor(cfg)
        self.alpha_predictor = AlphaPredictor(cfg)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor) -> RedirectorOutput:
        """``latents`` (B, C, h, w), ``timestep`` scalar or (B,), ``prompt`` (B, T, D): the conditional
        embedding only (never the classifier-free-guidance batch)."""
        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(latents.shape[0])
        joint = torch.cat([self.latent_tower(latents), self.time_tower(timestep)], dim=-1)
        read = self.prompt_reader(joint, prompt)
        logits = self.classifier(torch.cat([joint, prompt.mean(dim=1), read], dim=-1))
        mask = self.mask_predictor(prompt)
        delta = self.delta_generator(joint, read, prompt) * mask.unsqueeze(-1)
        return RedirectorOutput(logits, delta, mask, self.alpha_predictor(prompt))


def redirect(original: torch.Tensor, out: RedirectorOutput, *, alpha_scale: float, mask_again: bool) -> torch.Tensor:
    """The redirected embedding ``e + alpha_scale * alpha * |e| * normalize(delta)`` (per token).

    ``normalize`` removes the mask's magnitude from ``delta``; ``mask_again`` multiplies it back in after
    normalising, so that tokens the mask predictor rejects really stay put. The release does not (it
    moves every token by ``alpha * |e|``); this project's training and default do.
    """
    step = out.alpha * F.normalize(out.delta, dim=-1) * original.norm(dim=-1, keepdim=True)
    if mask_again:
        step = step * out.mask.unsqueeze(-1)
    return original + alpha_scale * step.to(original.dtype)


# ----------------------------------------------------------------------------- official checkpoints
# Official module names -> this module's names, as prefix templates ({i}: a block or head index). Entries
# without a trailing dot are whole keys.
OFFICIAL_KEY_MAP: list[tuple[str, str]] = [
    ("latent_encoder.{i}.conv.0.", "latent_tower.blocks.{i}.conv1."),
    ("latent_encoder.{i}.conv.1.", "latent_tower.blocks.{i}.norm1."),
    ("latent_encoder.{i}.conv.3.", "latent_tower.blocks.{i}.conv2."),
    ("latent_encoder.{i}.conv.4.", "latent_tower.blocks.{i}.norm2."),
    ("latent_encoder.{i}.downsample.", "latent_tower.blocks.{i}.skip."),
    ("latent_encoder.5.", "latent_tower.proj."),
    ("t_encoder.0.", "time_tower.linear."),
    ("t_encoder.2.", "time_tower.norm."),
    ("cross_attn.heads.{i}.query.", "prompt_reader.heads.{i}.to_q."),
    ("cross_attn.heads.{i}.key.", "prompt_reader.heads.{i}.to_k."),
    ("cross_attn.heads.{i}.value.", "prompt_reader.heads.{i}.to_v."),
    ("cross_attn.heads.{i}.norm.", "prompt_reader.heads.{i}.norm."),
    ("cross_attn.fuse.0.", "prompt_reader.fuse_linear."),
    ("cross_attn.fuse.1.", "prompt_reader.fuse_norm."),
    ("pos_embed", "delta_generator.position"),
    ("classifier.0.", "classifier.hidden."),
    ("classifier.3.", "classifier.out."),
    ("token_proj.0.", "delta_generator.proj_in."),
    ("token_proj.2.", "delta_generator.proj_out."),
    ("delta_head.down.", "delta_generator.down."),
    ("delta_head.up.", "delta_generator.up."),
    ("delta_head.scale", "delta_generator.scale"),
    ("gate_linear.", "delta_generator.gate."),
    ("mask_predictor.attn.", "mask_predictor.self_attn."),
    ("mask_predictor.predictor.0.", "mask_predictor.hidden."),
    ("mask_predictor.predictor.2.", "mask_predictor.norm."),
    ("mask_predictor.predictor.3.", "mask_predictor.out."),
    ("alpha_predictor.net.0.", "alpha_predictor.hidden."),
    ("alpha_predictor.net.2.", "alpha_predictor.out."),
]


class CheckpointMismatchError(DataFileError):
    """A checkpoint whose keys or shapes do not match the redirector exactly (one line: the CLI exits 2)."""


def _translate(key: str, source: str, target: str) -> str | None:
    regex = "^" + re.escape(source).replace(re.escape("{i}"), r"(\d+)") + ("" if source.endswith(".") else "$")
    match = re.match(regex, key)
    if match is None:
        return None
    return target.replace("{i}", match.group(1) if match.groups() else "") + key[match.end():]


def map_official_key(key: str) -> str | None:
    """This module's name for an official key (None if the key has no counterpart)."""
    key = key.removeprefix("module.")  # saved from DataParallel
    for official, own in OFFICIAL_KEY_MAP:
        if (mapped := _translate(key, official, own)) is not None:
            return mapped
    return None


def load_official_state_dict(model: Redirector, state: dict[str, torch.Tensor]) -> None:
    """Load an official-format state dict through :data:`OFFICIAL_KEY_MAP`. Every key of the checkpoint
    must map to a parameter/buffer of the same shape and every parameter/buffer must be covered, else
    :class:`CheckpointMismatchError` lists the problems and nothing is loaded."""
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unmapped, wrong_shape = [], []
    for key, value in state.items():
        target = map_official_key(key)
        if target is None or target not in own:
            unmapped.append(key)
        elif tuple(own[target].shape) != tuple(value.shape):
            wrong_shape.append(f"{key} -> {target}: checkpoint {tuple(value.shape)} vs {tuple(own[target].shape)}")
        else:
            mapped[target] = value
    # BatchNorm's step counters are bookkeeping, not weights: tolerated when absent.
    missing = sorted(k for k in set(own) - set(mapped) if not k.endswith("num_batches_tracked"))
    if unmapped or wrong_shape or missing:
        lines = [f"unexpected checkpoint key: {k}" for k in unmapped] + [f"shape mismatch: {s}" for s in wrong_shape]
        lines += [f"missing from checkpoint: {k}" for k in missing]
        shown = "; ".join(lines[:8]) + (f"; ... {len(lines) - 8} more" if len(lines) > 8 else "")
        raise CheckpointMismatchError(f"the SafeRedir checkpoint does not match the redirector ({len(lines)} "
                                      f"problems): {shown}")
    model.load_state_dict({**own, **mapped})


def to_official_state_dict(model: Redirector) -> dict[str, torch.Tensor]:
    """This redirector's weights under the official names (export, and the round-trip test)."""
    result = {}
    for key, value in model.state_dict().items():
        for official, own in OFFICIAL_KEY_MAP:
            if (name := _translate(key, own, official)) is not None:
                result[name] = value
                break
        else:
            raise KeyError(f"no official name for {key}")
    return result


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
