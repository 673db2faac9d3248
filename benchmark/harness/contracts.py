"""Contracts every registered component must keep, checked by running it (driven by the registry).

* **Defense**: the differentiable path white-box attacks use (``noise_prediction``) is the sampler's own
  step, and ``close()`` leaves the shared pipeline exactly as it found it (weights, attention processors,
  scheduler).
* **Attack**: one output per prompt, in order; failures only with a declared reason; queries within the
  declared budget; the same result for a prompt alone as in a batch.
* **Judge**: a batch scores exactly as its images one at a time.

The default test suite runs them for every built-in (``tests/test_contracts.py``) and ``python -m benchmark ci``
runs them for a plugin's components before its benchmark. On tiny-random (random weights) they prove
plumbing and consistency, not quality.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.api.attack import AttackContext, check_outputs
from benchmark.api.defense import DefendedPipeline, PrepareContext
from benchmark.api.model import LoadedModel
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES
from benchmark.api.sampling import draw, initial_latents
from benchmark.api.task import Task


class ContractViolation(AssertionError):
    """A component broke its contract; the message says which check and by how much."""


@dataclass
class ContractReport:
    component: str
    checks: list[str]

    def __str__(self) -> str:
        return f"{self.component}: " + ", ".join(self.checks)


# ------------------------------------------------------------------------------------------------ defenses
def pipeline_fingerprint(pipe: Any) -> dict[str, str]:
    """What a defense may change while applied and must restore on ``close()``."""
    fingerprint: dict[str, str] = {}
    for part in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, part, None)
        if module is None:
            continue
        digest = hashlib.sha256()
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        fingerprint[part] = digest.hexdigest()
    processors = getattr(pipe.unet, "attn_processors", {})
    fingerprint["attn_processors"] = ",".join(f"{k}={type(v).__name__}" for k, v in sorted(processors.items()))
    fingerprint["scheduler"] = f"{type(pipe.scheduler).__name__}:{sorted(dict(pipe.scheduler.config).items())}"
    return fingerprint


def _manual_images(defended: DefendedPipeline, prompts: list[str], latents: torch.Tensor, guidance: float) -> list[Any]:
    """One denoising step through ``noise_prediction``, decoded as the pipeline decodes."""
    pipe = defended.pipe
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    cond = defended.encode_prompts(prompts)
    start = latents * pipe.scheduler.init_noise_sigma
    x = pipe.scheduler.scale_model_input(start, t)
    with torch.no_grad():
        eps = defended.noise_prediction(x, t, cond, guidance_scale=guidance)
        final = pipe.scheduler.step(eps, t, start).prev_sample
        decoded = pipe.vae.decode(final / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=[True] * decoded.shape[0])


def check_defense(name: str, model: LoadedModel, task: Task, options: dict[str, Any] | None = None,
                  prompts: tuple[str, ...] = ("a church on a hill", "a nude person"), max_pixel_gap: int = 2,
                  artifact_dir: Path | None = None) -> ContractReport:
    """Prepare and apply defense ``name`` on ``model``; check its noise prediction and its ``close()``."""
    defense = DEFENSES.get(name)(**(options or {}))
    before = pipeline_fingerprint(model.pipe)
    checks = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = artifact_dir or Path(scratch)
        defense.prepare(PrepareContext(model=model, task=task, artifact_dir=folder))
        defended = defense.apply(model, task, folder)
        try:
            height = width = int(model.defaults.height)
            latents = initial_latents(list(range(3, 3 + len(prompts))), model.pipe, height, width).to(
                model.device, model.dtype)
            for guidance in (1.0, float(model.defaults.guidance_scale)):
                drawn = defended.generate(list(prompts), latents.clone(), num_inference_steps=1,
                                          guidance_scale=guidance, height=height, width=width)
                blocked = defended.blocked(drawn)
                manual = _manual_images(defended, list(prompts), latents.clone(), guidance)
                compared = [i for i, b in enumerate(blocked) if not b]
                if not compared:
                    raise ContractViolation(f"defense {name}: every contract prompt was blocked; pass prompts it "
                                            "samples")
                gap = max(int(np.abs(np.asarray(drawn[i], dtype=np.int16) - np.asarray(manual[i], dtype=np.int16)).max())
                          for i in compared)
                if gap > max_pixel_gap:
                    raise ContractViolation(f"defense {name}: one sampling step and one step through "
                                            f"noise_prediction give images {gap}/255 apart at guidance {guidance} "
                                            f"(tolerance {max_pixel_gap}): white-box attacks would not attack "
                                            "the sampler the benchmark draws from")
            checks.append("noise_prediction is the sampler step")
            images, blocked, _, triggered = draw(defended, [5], prompts=[prompts[0]], guidance_scale=1.0,
                                                 num_inference_steps=2, height=height, width=width)
            if len(images) != 1 or len(blocked) != 1 or len(triggered) != 1:
                raise ContractViolation(f"defense {name}: one seed must give one image, flag and trigger")
            checks.append("draw gives one image per seed")
        finally:
            defended.close()
    after = pipeline_fingerprint(model.pipe)
    changed = [part for part in before if before[part] != after.get(part)]
    if changed:
        raise ContractViolation(f"defense {name}: close() did not restore the shared pipeline ({', '.join(changed)})")
    checks.append("close() restores the pipeline")
    return ContractReport(f"defense {name}", checks)


# ------------------------------------------------------------------------------------------------ attacks
def _same_output(a: Any, b: Any) -> bool:
    if a.status != b.status or a.text != b.text:
        return False
    if (a.embeds is None) != (b.embeds is None):
        return False
    return a.embeds is None or torch.allclose(a.embeds, b.embeds, atol=1e-5)


def check_attack(name: str, ctx: AttackContext, prompts: list[Prompt], options: dict[str, Any] | None = None
                 ) -> ContractReport:
    """Run attack ``name`` on ``prompts`` and on its second prompt alone; check the attack contract."""
    if len(prompts) < 2:
        raise ValueError("check_attack needs at least two prompts")
    attack = ATTACKS.get(name)(**(options or {}))
    outputs = attack.run(list(prompts), ctx)
    check_outputs(attack, list(prompts), outputs)
    checks = ["one output per prompt, in order, declared failures only"]
    budget = attack.query_budget(ctx.model.name)
    for output in outputs:
        if output.queries < 0 or output.seconds < 0:
            raise ContractViolation(f"attack {name}: negative cost for prompt {output.prompt_id}")
        if budget is not None and output.queries > budget:
            raise ContractViolation(f"attack {name}: {output.queries} queries for prompt {output.prompt_id}, over "
                                    f"its declared budget of {budget}")
    checks.append("cost within budget" if budget is not None else "cost non-negative (no query budget declared)")
    alone = attack.run([prompts[1]], ctx)
    check_outputs(attack, [prompts[1]], alone)
    if not _same_output(alone[0], outputs[1]):
        raise ContractViolation(f"attack {name}: prompt {prompts[1].id} gives {alone[0].text!r} alone but "
                                f"{outputs[1].text!r} in a batch; a result must not depend on its batch")
    checks.append("same result alone as in a batch")
    return ContractReport(f"attack {name}", checks)


# ------------------------------------------------------------------------------------------------ judges
def check_judge(name: str, images: list[Any], prompts: list[str], options: dict[str, Any] | None = None,
                device: str = "cpu", atol: float = 1e-4) -> ContractReport:
    """Score ``images`` in one batch and one at a time; the verdicts must agree."""
    judge = JUDGES.get(name)(device=device, **(options or {}))
    batched = judge.score(images, prompts)
    if len(batched) != len(images):
        raise ContractViolation(f"judge {name}: {len(batched)} results for {len(images)} images")
    for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        single = judge.score([image], [prompt])[0]
        if abs(single.score - batched[i].score) > atol or single.flagged != batched[i].flagged:
            raise ContractViolation(f"judge {name}: image {i} scores {single.score:.6f} alone but "
                                    f"{batched[i].score:.6f} in a batch")
    identity = judge.identity()
    if not identity.version or not identity.preset:
        raise ContractViolation(f"judge {name}: its identity must carry a version and a preset (the decision rule)")
    return ContractReport(f"judge {name}", ["batched equals one at a time", "identity carries version and rule"])
