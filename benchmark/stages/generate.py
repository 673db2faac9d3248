"""Stage 3, generate: one PNG per (defended model, prompt, seed, image index, sampler settings).

Each image's initial noise is drawn on the CPU from its own seed, so an image is the same whatever
else shares its batch, and the same on any machine up to the numerics of its device. A cell is done
when its JSON sidecar (timings, flags) exists; the PNG is written first.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmark.hashing import stable_hash
from benchmark.stages import StageCounter
from benchmark.store import CellStore

log = logging.getLogger(__name__)


@dataclass
class GenCell:
    """One image to generate, and everything the records need to describe it."""

    task: str
    defense: str
    attack: str
    role: str  # "attack" (the task's attack prompts) or "benign"
    prompt_set: str
    prompt_id: str
    source_prompt: str
    adversarial_prompt: str | None
    embeds_path: str | None
    attack_status: str
    seed: int
    image_index: int
    guidance_scale: float
    num_inference_steps: int
    height: int
    width: int
    truncated: bool
    defense_key: str
    key: str = ""
    attack_meta: dict[str, Any] = field(default_factory=dict)
    # Retention concepts this (benign) prompt asks for; the concept judge checks they survive the defense.
    expects: tuple[str, ...] = ()

    @property
    def generates(self) -> bool:
        """Failed attacks produce nothing to generate; the cell still becomes a (not broken) record."""
        return self.attack_status == "ok"


def image_seed(prompt_seed: int | None, base_seed: int, prompt_id: str, image_index: int) -> int:
    """The source file's evaluation seed when it gives one, else one derived from the prompt id."""
    seed = prompt_seed if prompt_seed is not None else base_seed + int(stable_hash(prompt_id, 8), 16)
    return (seed + image_index) % (2**63)


def generate_key(cell: GenCell, model_key: str, device: str, dtype: str, embeds_hash: str | None) -> str:
    return stable_hash({
        "stage": "generate", "model": model_key, "defense": cell.defense_key,
        "text": cell.adversarial_prompt if embeds_hash is None else None, "embeds": embeds_hash,
        "seed": cell.seed, "guidance": cell.guidance_scale, "steps": cell.num_inference_steps,
        "height": cell.height, "width": cell.width, "device": device, "dtype": dtype,
    })


def initial_latents(seeds: list[int], pipe, height: int, width: int) -> torch.Tensor:
    channels = pipe.unet.config.in_channels
    scale = pipe.vae_scale_factor
    noise = [
        torch.randn((channels, height // scale, width // scale), generator=torch.Generator("cpu").manual_seed(s))
        for s in seeds
    ]
    return torch.stack(noise)


def generate_cells(defended, cells: list[GenCell], store: CellStore, batch_size: int,
                   counter: StageCounter, desc: str) -> None:
    """Generate every cell whose artifact is missing, in batches of cells sharing their sampler settings."""
    todo = []
    for cell in cells:
        if not cell.generates:
            continue
        if store.exists("generate", cell.key, "json"):
            counter.cached += 1
        else:
            todo.append(cell)
    # Duplicate keys (two attacks giving the same text) are generated once.
    unique: dict[str, GenCell] = {}
    for cell in todo:
        unique.setdefault(cell.key, cell)
    counter.cached += len(todo) - len(unique)
    groups: dict[tuple, list[GenCell]] = defaultdict(list)
    for cell in unique.values():
        groups[(cell.guidance_scale, cell.num_inference_steps, cell.height, cell.width,
                cell.embeds_path is not None)].append(cell)
    if not unique:
        return
    pipe = defended.pipe
    bar = tqdm(total=len(unique), desc=desc, unit="img", leave=False)
    for (guidance, steps, height, width, uses_embeds), group in groups.items():
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            latents = initial_latents([c.seed for c in batch], pipe, height, width)
            latents = latents.to(device=pipe.device, dtype=pipe.unet.dtype)
            prompts, embeds = None, None
            if uses_embeds:
                embeds = torch.stack([_load_embeds(store, c.embeds_path) for c in batch])
                embeds = embeds.to(device=pipe.device, dtype=pipe.text_encoder.dtype)
            else:
                prompts = [c.adversarial_prompt for c in batch]
            began = time.perf_counter()
            images = defended.generate(prompts, latents, prompt_embeds=embeds, num_inference_steps=steps,
                                       guidance_scale=guidance, height=height, width=width)
            blocked = defended.blocked(images)
            per_image = (time.perf_counter() - began) / len(batch)
            triggered = defended.triggered() or [None] * len(batch)
            for cell, image, is_blocked, trig in zip(batch, images, blocked, triggered, strict=True):
                image_path = store.write_png("generate", cell.key, image)
                store.write_json("generate", cell.key, {
                    "image_path": image_path, "generate_seconds": per_image, "blocked": bool(is_blocked),
                    "batch_size": len(batch), "defense_triggered": None if trig is None else bool(trig),
                })
                counter.computed += 1
            bar.update(len(batch))
    bar.close()


def _load_embeds(store: CellStore, relpath: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(store.resolve(relpath)))["prompt_embeds"]
