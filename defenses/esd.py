"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023), ``esd-x`` and ``esd-u``.

Algorithm (fine-tune a copy theta of the frozen UNet theta*; c = the task's concept words)::

    for i in 1..N:
        k ~ U{0, ..., S-1}                                  # a step of an S-step DDIM schedule
        x_k <- DDIM-sample k steps from noise with theta, prompt c, guidance 3     (no gradient)
        t   <- the schedule's timestep at step k
        e_0, e_c <- eps_theta*(x_k, "", t), eps_theta*(x_k, c, t)                 (frozen model)
        target <- e_0 - eta * (e_c - e_0)                    # negative guidance away from c
        theta  <- theta - lr * grad || eps_theta(x_k, c, t) - target ||^2         (Adam, batch 1)

Which parameters train: ``esd-x`` the cross-attention modules (those that read the prompt; erases the
concept as *named*), ``esd-u`` everything else (unconditional erasure) except the timestep embedding and
the output convolution, which stay frozen (as in the authors' released training script, as we read it).

Defaults. Paper (SD 1.4): lr 1e-5, 1000 iterations, eta 1, batch 1, 50 DDIM steps, sampling guidance 3.
sd-mini (``None`` options resolve per model): 200 iterations with lr 3e-4 (x) / 5e-5 (u), training
latents from a 10-step DDIM schedule. A 5M-parameter UNet needs a larger step than SD's 860M; ESD-u
trains ten times more parameters than ESD-x and every one of them acts on every prompt, so its step is
smaller; the sweep that chose these values (on the first shipped sd-mini) is in
``benchmarks/results/esd-sweep.md``. The budget is about 1-2 minutes per defense on two CPU cores.
Each iteration samples the concept with the model being trained, as in the paper, so later iterations
see what the partly erased model still draws.

The artifact is the difference (edited - base) of the trained parameters, a safetensors file cached in the
prepare stage's artifact directory; applying the defense adds it to the shared pipeline and ``close()``
subtracts it back (restores the saved originals).

Memory: an iteration's ``batch_size`` latents that run out of memory are split into micro-batches (halved
until they fit) whose gradients accumulate to the whole batch's, so the trained weights are the same up to float
rounding; each halving is logged and recorded (the prepare stage's ``oom_backoffs``, and the artifact's
metadata). ``gradient_checkpointing`` recomputes the trained UNet's activations in the backward pass (less
memory, slower); it changes no result and no cache key.

Options are checked when the defense is built (positive counts and learning rate, eta >= 0); a task
without concept words needs the option ``prompt`` (checked before any work).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from tqdm.auto import tqdm

from benchmark.api.defense import Defense, DefenseKind, PrepareContext
from benchmark.api.errors import ConfigError
from benchmark.api.memory import Backoff, memory_hint
from benchmark.api.memory import gradient_checkpointing as checkpointing
from benchmark.api.presets import Presets
from benchmark.api.registry import DEFENSES
from defenses.weight_edit import WeightEditPipeline, artifact_file, cross_attention_modules, load_edit, save_edit

log = logging.getLogger(__name__)

DELTA_FILE = "esd_delta.safetensors"

# Paper defaults, and the ones used on sd-mini (see the module docstring for why they differ).
PAPER = {"lr": 1e-5, "iterations": 1000, "ddim_steps": 50}
SD_MINI = {"x": {"lr": 3e-4, "iterations": 200, "ddim_steps": 10},
           "u": {"lr": 5e-5, "iterations": 200, "ddim_steps": 10}}


@dataclass
class EsdOptions:
    prompt: Annotated[str | None, Field(
        description="the concept prompt; default: one of the task's concept words per iteration")] = None
    eta: Annotated[float, Field(ge=0, allow_inf_nan=False,
                                description="negative-guidance strength of the target")] = 1.0
    lr: Annotated[float | None, Field(gt=0, allow_inf_nan=False,
                                      description="None: 1e-5 (paper); sd-mini 3e-4 (x), 5e-5 (u)")] = None
    iterations: Annotated[int | None, Field(ge=1, description="None: 1000 (paper); sd-mini 200")] = None
    ddim_steps: Annotated[int | None, Field(
        ge=1, description="schedule of the training latents; None: 50 (paper), 10 on sd-mini")] = None
    sample_guidance: Annotated[float, Field(ge=0, allow_inf_nan=False,
                                            description="guidance when sampling the training latents")] = 3.0
    batch_size: Annotated[int, Field(
        ge=1, description="training latents per iteration (micro-batched on out-of-memory)")] = 1
    seed: Annotated[int, Field(description="seed of the training latents and prompts")] = 0
    gradient_checkpointing: Annotated[bool, Field(
        description="recompute the trained UNet's activations in the backward pass (less memory, slower; same result)"
    )] = False


def esd_parameters(unet: torch.nn.Module, method: str) -> list[str]:
    """Names of the UNet parameters ESD trains: ``x`` cross-attention, ``u`` all others (minus the timestep
    embedding and the output convolution)."""
    cross = [f"{name}." for name in cross_attention_modules(unet)]
    names = []
    for name, _ in unet.named_parameters():
        in_cross = any(name.startswith(prefix) for prefix in cross)
        if method == "x" and in_cross:
            names.append(name)
        elif method == "u" and not in_cross and not name.startswith(("time_embedding.", "conv_out.")):
            names.append(name)
    if not names:
        raise ValueError(f"ESD-{method}: the UNet has no parameter of that kind to train")
    return names


class _Esd(Defense):
    kind = DefenseKind.WEIGHT_EDIT
    Options = EsdOptions
    method: ClassVar[str] = "x"
    runtime_options = ("gradient_checkpointing",)  # memory only: not in the cache key

    def prompts(self, task) -> list[str]:
        """The concept prompts: the option, else the task's concept words; a :class:`ConfigError` when empty."""
        prompts = [self.options.prompt] if self.options.prompt else list(task.concept_words)
        if not prompts:
            raise ConfigError(f"defense '{self.name}' needs the concept to erase, and task '{task.name}' has no "
                              f"concept_words: pass --option defense:{self.name}.prompt=...")
        return prompts

    def check_inputs(self, ctx) -> None:
        self.prompts(ctx.task)

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        settings = self.preset_values(ctx.model.name)  # lr, iterations, ddim_steps
        prompts = self.prompts(ctx.task)
        start = time.perf_counter()
        backoff = Backoff(self.options.batch_size, f"prepare {self.name} {ctx.task.name}",
                          hint=memory_hint("defense", self.name, self.options))
        delta, losses = train_esd(ctx.model.pipe, prompts, method=self.method, eta=self.options.eta,
                                  sample_guidance=self.options.sample_guidance, batch_size=self.options.batch_size,
                                  seed=self.options.seed, gradient_checkpointing=self.options.gradient_checkpointing,
                                  backoff=backoff, **settings)
        save_edit(artifact_file(ctx.artifact_dir, DELTA_FILE), delta,
                  {"defense": self.name, "prompts": ", ".join(prompts)})
        tail = losses[-max(1, len(losses) // 10):]
        meta = {"train_seconds": time.perf_counter() - start, "trained_parameters": len(delta),
                "trained_values": int(sum(v.numel() for v in delta.values())), "prompts": prompts,
                "loss_first": losses[0], "loss_last_10pct": sum(tail) / len(tail), **settings}
        return {**meta, "oom_backoffs": backoff.events} if backoff.events else meta

    def apply(self, model, task, artifact_dir: Path) -> WeightEditPipeline:
        path = artifact_file(artifact_dir, DELTA_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: no trained delta in {artifact_dir}; run the prepare stage first")
        return WeightEditPipeline(model, self, task, load_edit(path), as_delta=True)


def train_esd(pipe, prompts: list[str], *, method: str, eta: float, lr: float, iterations: int, ddim_steps: int,
              sample_guidance: float, batch_size: int, seed: int, gradient_checkpointing: bool = False,
              backoff: Backoff | None = None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train ESD on a copy of ``pipe.unet`` (the pipeline itself is left untouched); returns the delta of
    the trained parameters as ``{"unet.<name>": edited - base}`` and the loss per iteration.

    ``backoff`` sizes the micro-batches of an iteration's ``batch_size`` latents (default: the whole batch,
    halved on out-of-memory); ``gradient_checkpointing`` recomputes the trained UNet's activations."""
    frozen = pipe.unet
    device = frozen.device
    names = esd_parameters(frozen, method)
    student = copy.deepcopy(frozen).float().train()
    student.requires_grad_(False)
    params = dict(student.named_parameters())
    trainable = [params[n] for n in names]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable, lr=lr)
    from diffusers import DDIMScheduler

    # The paper samples training latents with DDIM; a fresh scheduler keeps the pipeline's own untouched,
    # and a stateless one (unlike PNDM) can be stopped and restarted every iteration.
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(ddim_steps, device=device)
    timesteps = scheduler.timesteps

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            cond, _ = pipe.encode_prompt(texts, device, 1, False)
        return cond.float()

    empty = embed([""])
    concept_embeds = {p: embed([p]) for p in prompts}
    rng = random.Random(seed)
    noise_gen = torch.Generator("cpu").manual_seed(seed)
    shape = (batch_size, frozen.config.in_channels, frozen.config.sample_size, frozen.config.sample_size)
    losses: list[float] = []
    backoff = backoff or Backoff(batch_size, f"ESD-{method} training")

    def reset() -> None:
        optimizer.zero_grad(set_to_none=True)

    def share(rows: slice, prompt: str, stop: int, start_latents: torch.Tensor) -> torch.Tensor:
        """The loss of the iteration's latents ``rows`` as their share of the batch's (the rows' mean times
        their fraction of the batch): micro-batches' gradients then add up to the batch's."""
        latents = start_latents[rows]
        n = latents.shape[0]
        cond = concept_embeds[prompt].expand(n, -1, -1)
        uncond = empty.expand(n, -1, -1)
        student.eval()
        with torch.no_grad():
            for t in timesteps[:stop]:  # partial sampling with the model being trained, guidance 3
                x = scheduler.scale_model_input(latents, t)
                e_u, e_c = student(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
                latents = scheduler.step(e_u + sample_guidance * (e_c - e_u), t, latents).prev_sample
            t = timesteps[stop]
            x = scheduler.scale_model_input(latents, t)
            dtype = frozen.dtype
            e_0, e_c = frozen(torch.cat([x, x]).to(dtype), t,
                              encoder_hidden_states=torch.cat([uncond, cond]).to(dtype)).sample.float().chunk(2)
            target = e_0 - eta * (e_c - e_0)
        student.train()
        prediction = student(x, t, encoder_hidden_states=cond).sample
        return torch.nn.functional.mse_loss(prediction, target) * (n / batch_size)

    with checkpointing(student, enabled=gradient_checkpointing):
        for _ in tqdm(range(iterations), desc=f"ESD-{method}", unit="it", leave=False):
            # The iteration's randomness is drawn once, before any (micro-)batch: a retry reuses it.
            prompt = prompts[rng.randrange(len(prompts))]
            stop = rng.randrange(ddim_steps)
            latents = torch.randn(shape, generator=noise_gen).to(device) * scheduler.init_noise_sigma
            reset()
            losses.append(backoff.accumulate(
                batch_size, lambda rows, p=prompt, k=stop, z=latents: share(rows, p, k, z), reset))
            optimizer.step()
    base = dict(frozen.named_parameters())
    delta = {f"unet.{n}": (params[n].detach().float() - base[n].detach().float()).cpu() for n in names}
    return delta, losses


def _presets(method: str) -> Presets:
    """The paper's defaults and sd-mini's for one method; they enter the cache key ("defaults"), so changing
    them retrains instead of reusing a stale delta."""
    return Presets({"paper": PAPER, "sd-mini": SD_MINI[method]}, by_model={"sd-mini": "sd-mini"})


@DEFENSES.register("esd-x")
class EsdX(_Esd):
    """ESD-x (Gandikota et al. 2023): fine-tune cross-attention to negatively guide away from the concept."""

    method = "x"
    presets = _presets("x")


@DEFENSES.register("esd-u")
class EsdU(_Esd):
    """ESD-u (Gandikota et al. 2023): fine-tune non-cross-attention weights (unconditional erasure)."""

    method = "u"
    presets = _presets("u")
