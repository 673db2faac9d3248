"""Stage 3, generate: one PNG per (defended model, prompt, seed, image index, sampler settings).

Each image's initial noise is drawn on the CPU from its own seed, so an image is the same whatever
else shares its batch, and the same on any machine up to the numerics of its device. A cell is done
when its JSON sidecar (timings, flags) exists; the PNG is written first.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmark.api.memory import Backoff
from benchmark.api.model import DTYPES
from benchmark.api.sampling import draw, image_seed, initial_latents  # noqa: F401  (re-exported for the stages)
from benchmark.harness.stages import StageCounter
from benchmark.hashing import stable_hash
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


def image_key(*, model_key: str, defense_key: str, text: str | None, embeds_hash: str | None, seed: int,
              guidance: float, steps: int, height: int, width: int, device: str, dtype: str) -> str:
    """What an image is a function of: the same key is the same image, whichever stage drew it."""
    return stable_hash({
        "stage": "generate", "model": model_key, "defense": defense_key,
        "text": text if embeds_hash is None else None, "embeds": embeds_hash,
        "seed": seed, "guidance": guidance, "steps": steps,
        "height": height, "width": width, "device": device, "dtype": dtype,
    })


def generate_key(cell: GenCell, model_key: str, device: str, dtype: str, embeds_hash: str | None) -> str:
    return image_key(model_key=model_key, defense_key=cell.defense_key, text=cell.adversarial_prompt,
                     embeds_hash=embeds_hash, seed=cell.seed, guidance=cell.guidance_scale,
                     steps=cell.num_inference_steps, height=cell.height, width=cell.width, device=device,
                     dtype=dtype)


def generate_cells(defended, cells: list[GenCell], store: CellStore, *, batch_size: int,
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
    # A batch that runs out of memory is halved and retried (each halving recorded on the counter); a cell
    # is written only after its batch was drawn, so a retry loses nothing.
    backoff = Backoff(batch_size, desc)
    sampled_in = sampling_dtype(pipe)

    def draw_batch(settings: tuple, batch: list[GenCell]) -> None:
        guidance, steps, height, width, uses_embeds = settings
        prompts, embeds = None, None
        if uses_embeds:
            embeds = torch.stack([_load_embeds(store, c.embeds_path) for c in batch])
            embeds = embeds.to(device=pipe.device, dtype=pipe.text_encoder.dtype)
        else:
            prompts = [c.adversarial_prompt for c in batch]
        images, blocked, per_image, triggered = draw(
            defended, [c.seed for c in batch], prompts=prompts, prompt_embeds=embeds,
            guidance_scale=guidance, num_inference_steps=steps, height=height, width=width)
        for cell, image, is_blocked, trig in zip(batch, images, blocked, triggered, strict=True):
            write_generation(store, cell.key, image, seconds=per_image, blocked=is_blocked, batch_size=len(batch),
                             triggered=trig, dtype=sampled_in)
            counter.computed += 1
        bar.update(len(batch))

    try:
        for settings, group in groups.items():
            backoff.run(group, lambda batch, settings=settings: draw_batch(settings, batch))
    finally:
        counter.backoffs.extend(backoff.events)
    bar.close()


def sampling_dtype(pipe) -> str | None:
    """The precision the pipeline samples in (its UNet's), as ``--dtype`` names it (fp32, fp16, bf16)."""
    dtype = getattr(getattr(pipe, "unet", None), "dtype", None)
    if dtype is None:
        return None
    return {value: name for name, value in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def write_generation(store: CellStore, key: str, image, *, seconds: float, blocked: bool, batch_size: int,
                     triggered: bool | None, origin: str = "generate", dtype: str | None = None) -> None:
    """One generated image: the PNG first, then the JSON sidecar that marks the cell done. ``dtype``: the
    precision it was actually sampled in (the key holds the run's ``--dtype``; the sidecar says what the
    pipeline really ran in, so a half-precision run can be checked image by image). Not in any key."""
    image_path = store.write_png("generate", key, image)
    store.write_json("generate", key, {
        "image_path": image_path, "generate_seconds": seconds, "blocked": blocked, "batch_size": batch_size,
        "defense_triggered": None if triggered is None else bool(triggered), "origin": origin, "dtype": dtype,
    })


@dataclass
class SharedGenerations:
    """The generate stage's store, opened to attacks that judge images of the defended model.

    UnlearnDiff's judge checks and paraphrase's queries generate a prompt through the defended sampler with
    its evaluation seed: exactly an image the generate stage would draw later (the check of the source
    prompt is the ASR(none) image; the last check is the attack's own image). Through this object they
    read and write those images under the generate stage's keys, so each is drawn once, and the image the
    record holds is the one the attack's judge saw (not a redraw in another batch, equal only up to float
    tolerance).
    """

    defended: Any
    store: CellStore
    model_key: str
    defense_key: str
    device: str
    dtype: str
    computed: int = 0
    cached: int = 0

    def keys(self, texts: list[str], seeds: list[int], *, guidance_scale: float, num_inference_steps: int,
             height: int, width: int) -> list[str]:
        """The generate stage's keys of ``texts`` drawn with their seeds at these settings."""
        return [image_key(model_key=self.model_key, defense_key=self.defense_key, text=t, embeds_hash=None,
                          seed=s, guidance=guidance_scale, steps=num_inference_steps, height=height, width=width,
                          device=self.device, dtype=self.dtype) for t, s in zip(texts, seeds, strict=True)]

    def lookup(self, texts: list[str], seeds: list[int], **settings: Any) -> list[tuple[Any, bool] | None]:
        """Per text, its stored (image, blocked), or None where the store has no image of it yet."""
        from PIL import Image

        found: list[tuple[Any, bool] | None] = []
        for key in self.keys(texts, seeds, **settings):
            if not self.store.exists("generate", key, "json"):
                found.append(None)
                continue
            meta = self.store.read_json("generate", key)
            with Image.open(self.store.resolve(meta["image_path"])) as stored:
                found.append((stored.convert("RGB"), bool(meta["blocked"])))
            self.cached += 1
        return found

    def record(self, texts: list[str], seeds: list[int], images: list[Any], blocked: list[bool], seconds: float,
               triggered: list[bool | None] | None = None, **settings: Any) -> None:
        """Store images an attack drew itself through this defense's sampler (one batch, ``seconds`` per image)
        under the generate stage's keys, as :meth:`generate` stores the ones it draws."""
        triggered = triggered or [None] * len(texts)
        for key, image, is_blocked, trig in zip(self.keys(texts, seeds, **settings), images, blocked, triggered,
                                                strict=True):
            write_generation(self.store, key, image, seconds=seconds, blocked=is_blocked, batch_size=len(texts),
                             triggered=trig, origin="attack", dtype=sampling_dtype(self.defended.pipe))
            self.computed += 1

    def generate(self, texts: list[str], seeds: list[int], *, guidance_scale: float, num_inference_steps: int,
                 height: int, width: int) -> tuple[list[Any], list[bool]]:
        """Images and blocked flags for ``texts`` with their seeds; stored ones are read, the rest drawn in
        one batch and stored."""
        settings = {"guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps, "height": height,
                    "width": width}
        keys = self.keys(texts, seeds, **settings)
        found = self.lookup(texts, seeds, **settings)
        images: list[Any] = [None] * len(texts)
        blocked = [False] * len(texts)
        todo: dict[str, list[int]] = {}
        for i, (key, hit) in enumerate(zip(keys, found, strict=True)):
            if hit is not None:
                images[i], blocked[i] = hit
            else:
                todo.setdefault(key, []).append(i)
        if todo:
            first = [idx[0] for idx in todo.values()]
            drawn, drawn_blocked, per_image, triggered = draw(self.defended, [seeds[i] for i in first],
                                                              prompts=[texts[i] for i in first], **settings)
            self.record([texts[i] for i in first], [seeds[i] for i in first], drawn, drawn_blocked, per_image,
                        triggered, **settings)
            for idx, image, is_blocked in zip(todo.values(), drawn, drawn_blocked, strict=True):
                for i in idx:
                    images[i], blocked[i] = image, is_blocked
        return images, blocked


def _load_embeds(store: CellStore, relpath: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(store.resolve(relpath)))["prompt_embeds"]
