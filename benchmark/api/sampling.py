"""Sampling primitives every stage, defense and attack shares: an image's seed, its initial noise, and one
batch through a defended sampler.

Each image's initial noise is drawn on the CPU from its own seed, so an image is the same whatever else
shares its batch, and the same on any machine up to the numerics of its device.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmark.hashing import stable_hash


def image_seed(prompt_seed: int | None, base_seed: int, prompt_id: str, image_index: int) -> int:
    """The source file's evaluation seed when it gives one, else one derived from the prompt id."""
    seed = prompt_seed if prompt_seed is not None else base_seed + int(stable_hash(prompt_id, 8), 16)
    return (seed + image_index) % (2**63)


def initial_latents(seeds: list[int], pipe, height: int, width: int) -> torch.Tensor:
    channels = pipe.unet.config.in_channels
    scale = pipe.vae_scale_factor
    noise = [
        torch.randn((channels, height // scale, width // scale), generator=torch.Generator("cpu").manual_seed(s))
        for s in seeds
    ]
    return torch.stack(noise)


def draw(defended, seeds: list[int], *, prompts: list[str] | None = None, prompt_embeds: torch.Tensor | None = None,
         guidance_scale: float, num_inference_steps: int, height: int, width: int,
         ) -> tuple[list[Any], list[bool], float, list[bool | None]]:
    """One batch through the defended sampler, each image from its own seed. Returns the images, whether
    the defense blocked each, the wall seconds per image (sampling and filtering), and per image whether a
    switching defense intervened (None: it has no switch)."""
    pipe = defended.pipe
    latents = initial_latents(seeds, pipe, height, width).to(device=pipe.device, dtype=pipe.unet.dtype)
    began = time.perf_counter()
    images = defended.generate(prompts, latents, prompt_embeds=prompt_embeds, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, height=height, width=width)
    blocked = [bool(b) for b in defended.blocked(images)]
    per_image = (time.perf_counter() - began) / len(seeds)
    triggered = defended.triggered() or [None] * len(seeds)
    return images, blocked, per_image, triggered
