"""AdvUnlearn: Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models
(Zhang et al., NeurIPS 2024), ``advunlearn``.

Bi-level adversarial training of the TEXT ENCODER E_theta (the paper's choice: the erased encoder is
plug-and-play, it drops into any pipeline of the same base model). The UNet eps and the original encoder
E* stay frozen. c = a concept prompt (one of the task's concept words per iteration), R = retain prompts::

    for i in 1..N:
        c ~ concepts
        (x_t, t, e_0, e_c) <- frozen model: DDIM-sample prompt c with guidance 3 for a random number of
                              steps; e_0 = eps(x_t, t, E*("")), e_c = eps(x_t, t, E*(c))
        if i > warmup:                                       # inner attack (UnlearnDiff-style)
            delta <- k random vocabulary embeddings ("random" init) or the last delta ("latest")
            repeat A times (fresh (x_t, t, e_c) each step):  # "pgd": Adam(attack_lr) steps
                delta <- delta - Adam_step grad_delta || eps(x_t, t, E_theta([BOS, delta, c, EOS])) - e_c ||^2
            ("fast": one signed-gradient step, delta <- delta - attack_lr * sign(grad): the paper's fast AT)
            c_adv <- [BOS, delta, c, EOS]                    # k soft tokens prepended, in word-embedding space
        else:
            c_adv <- c                                       # warm-up: plain ESD on the text encoder
        l_u <- || eps(x_t, t, E_theta(c_adv)) - (e_0 - eta (e_c - e_0)) ||^2        # ESD's negative guidance
        r_1..r_B ~ R;  (x_t^r, e_r) <- frozen model on r_j, same step count
        l_r <- mean_j || eps(x_t^r, t, E_theta(r_j)) - e_r ||^2                      # utility retention
        theta <- theta - lr * grad (l_u + gamma l_r)                                 (Adam)

Trained parameters: every transformer layer of the text encoder and its final layer norm; the token and
position embeddings stay frozen (the paper's ``text_encoder_full``, component ``all``). Options
``train_layers`` / ``train_final_norm`` select fewer (the paper's layer-wise ablation).

Paper defaults (SD 1.4, the authors' README commands and script defaults): N = 1000 iterations, lr 1e-5
(Adam), A = 30 attack steps with attack lr 1e-3, k = 1 prepended token, random attack init, warm-up 200
iterations, gamma = 0.3 with B = 5 retain prompts per iteration ("reg" retain mode), eta = 1, sampling
guidance 3, a 50-step DDIM schedule. Retain prompts: the paper uses filtered COCO object captions; here
``retain_file`` (a CSV/TSV/JSON/TXT prompt file, e.g. the authors' ``coco_object_retain.csv``) or, without
it, a small built-in list of COCO-style object prompts (``BUILTIN_RETAIN``); on sd-mini's own tasks the
benign prompts of ``training_split`` (disjoint from every evaluation set). Retain prompts that contain a
concept word are dropped (the paper's retain sets are filtered the same way).

Frozen-model samples. Since only the text encoder trains and the samples come from the frozen UNet with
the frozen encoder (as in the authors' code), every (x_t, t, e_0, e_c) is drawn from a fixed distribution.
It is therefore drawn once, up front: ``pool`` DDIM trajectories per concept prompt and one per retain
prompt, every step of each kept. A draw from the pool is a draw from the paper's distribution (a random
start code and a random step count), finite instead of fresh; the guided sampling step already computes
e_0 and e_c, so the pool costs one sampling pass. Exact schedule timesteps are used (the authors jitter t
inside the step's interval).

sd-mini preset (``None`` options resolve per model; the per-model values enter the cache key): 100
iterations, lr 3e-4, A = 3 attack steps with attack lr 1e-2, k = 3 tokens, warm-up 20, a 10-step DDIM
schedule. The text encoder has 1.1M parameters (3 layers, 192-d) against CLIP-L's 123M, so the step is
larger; the budget (A = 3 instead of 30) is about 1.5 minutes of CPU. Chosen on held-out prompts, where lr
1e-4 erased too little in 100 steps and the fast attack cost 5 benign CLIP points (the sweep, with its
command: ``benchmarks/results/advunlearn-sweep.md``). k = 3 matches the UnlearnDiff attack's k on
mini-object (it uses 5 on mini-unsafe).

The artifact is the difference (trained - base) of the trained text-encoder parameters, keyed
``text_encoder.<name>``, in a safetensors file in the prepare stage's artifact directory; applying the
defense adds it to the shared pipeline's text encoder and ``close()`` restores the originals. A published
AdvUnlearn text encoder (``OPTML-Group/AdvUnlearn``, subfolder ``nudity_unlearned`` ...) loads through the
``checkpoint`` defense with ``component=text_encoder`` instead.

Memory: a step's ``retain_batch`` retain prompts that run out of memory are split into micro-batches (halved
until they fit; the unlearning term rides with the first) whose gradients accumulate to the whole step's, so the
trained encoder is the same up to float rounding; the frozen-model pool is sampled in chunks that halve the same
way (its noise drawn up front, so a chunk's size changes nothing). Each halving is logged and recorded (the
prepare stage's ``oom_backoffs``, and the artifact's metadata). ``gradient_checkpointing`` recomputes the
activations of the trained text encoder and of the UNet the gradients pass through (less memory, slower); it
changes no result and no cache key.

Options are checked when the defense is built (positive counts and rates); a task without concept words
needs the option ``prompt``, and a ``retain_file`` must exist and hold prompts (both checked before any
work).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, Field
from tqdm.auto import tqdm

from benchmark.api.defense import Defense, DefenseKind, PrepareContext
from benchmark.api.errors import ConfigError, DataFileError
from benchmark.api.files import FilePath
from benchmark.api.memory import Backoff, memory_hint
from benchmark.api.memory import gradient_checkpointing as checkpointing
from benchmark.api.presets import Presets
from benchmark.api.registry import DEFENSES
from benchmark.mini_world import draws_world
from benchmark.mini_world.tasks import TASKS as MINI_TASKS
from benchmark.mini_world.tasks import training_split
from defenses._options import comma_list
from defenses.weight_edit import WeightEditPipeline, artifact_file, load_edit, save_edit

log = logging.getLogger(__name__)

DELTA_FILE = "advunlearn_delta.safetensors"

# Paper defaults (SD 1.4) and the sd-mini preset (why: the module docstring; the sweep that chose it:
# benchmarks/results/advunlearn-sweep.md).
PAPER = {"iterations": 1000, "lr": 1e-5, "attack_steps": 30, "attack_lr": 1e-3, "tokens": 1, "warmup": 200,
         "ddim_steps": 50}
SD_MINI = {"iterations": 100, "lr": 3e-4, "attack_steps": 3, "attack_lr": 1e-2, "tokens": 3, "warmup": 20,
           "ddim_steps": 10}

# Retain prompts on a model without retain set of its own (the paper: filtered COCO object captions).
BUILTIN_RETAIN = (
    "a photo of a dog sitting on a couch", "a red car parked on a city street", "a bowl of fruit on a wooden table",
    "a cat sleeping on a windowsill", "a train arriving at a station", "a laptop on a desk next to a cup of coffee",
    "a group of people walking on a beach", "a bicycle leaning against a brick wall", "a plate of pasta with basil",
    "an airplane flying over the clouds", "a horse grazing in a green field", "a sailboat on a calm lake",
    "a kitchen with white cabinets and a stove", "a teddy bear on a bed", "a pizza on a baking tray",
    "a man riding a skateboard down a ramp", "a clock tower in the town square", "a giraffe standing near trees",
    "a bus driving down a busy road", "a vase of flowers on a table", "a child flying a kite in a park",
    "a bench in a snowy park", "an elephant walking through tall grass", "a stop sign at an intersection",
    "a woman holding an umbrella in the rain", "a pair of scissors on a sheet of paper",
    "a boat docked at a harbor", "a sandwich and a glass of juice", "a zebra drinking at a waterhole",
    "a living room with a television and a sofa",
)


@dataclass
class AdvUnlearnOptions:
    prompt: Annotated[str | None, Field(
        description="the concept prompt; default: one of the task's concept words per iteration")] = None
    iterations: Annotated[int | None, Field(
        ge=1, description="outer (unlearning) steps; None: 1000 (paper), sd-mini 100")] = None
    lr: Annotated[float | None, Field(
        gt=0, allow_inf_nan=False, description="text-encoder Adam lr; None: 1e-5 (paper), sd-mini 3e-4")] = None
    attack: Annotated[Literal["pgd", "fast"], Field(
        description="inner attack: pgd = attack_steps Adam steps (paper); fast = one signed step (fast AT)")] = "pgd"
    attack_steps: Annotated[int | None, Field(
        ge=1, description="pgd steps per outer step; None: 30 (paper), sd-mini 3")] = None
    attack_lr: Annotated[float | None, Field(
        gt=0, allow_inf_nan=False, description="inner step size; None: 1e-3 (paper), sd-mini 1e-2")] = None
    tokens: Annotated[int | None, Field(
        ge=1, description="k adversarial soft tokens prepended; None: 1 (paper), sd-mini 3")] = None
    attack_init: Annotated[Literal["random", "latest"], Field(
        description="start each attack from random tokens (paper's command) or the last one")] = "random"
    warmup: Annotated[int | None, Field(
        ge=0, description="outer steps before the first attack; None: 200 (paper), sd-mini 20")] = None
    retain_weight: Annotated[float, Field(
        ge=0, allow_inf_nan=False, description="gamma, weight of the utility-retaining loss")] = 0.3
    retain_batch: Annotated[int, Field(ge=0, description="retain prompts per outer step (0: no retain loss)")] = 5
    retain_file: Annotated[FilePath | None, Field(
        description="prompt file (CSV/TSV/JSON/TXT) of retain prompts; default: sd-mini split or built-in list")] = None
    retain_prompts: Annotated[int, Field(ge=1, description="how many retain prompts are drawn into the pool")] = 32
    eta: Annotated[float, Field(
        ge=0, allow_inf_nan=False, description="negative-guidance strength of the unlearning target")] = 1.0
    sample_guidance: Annotated[float, Field(
        ge=0, allow_inf_nan=False, description="guidance of the frozen-model samples")] = 3.0
    ddim_steps: Annotated[int | None, Field(
        ge=1, description="schedule of the samples; None: 50 (paper), 10 on sd-mini")] = None
    pool: Annotated[int, Field(ge=1, description="frozen-model trajectories per concept prompt (every step kept)")] = 8
    train_layers: Annotated[list[Annotated[int, Field(ge=0)]] | None, BeforeValidator(comma_list), Field(
        description="encoder layers trained; None: all (text_encoder_full)")] = None
    train_final_norm: Annotated[bool, Field(
        description="train the final layer norm too (paper: yes with component all)")] = True
    seed: Annotated[int, Field(
        description="seed of the samples, the prompts drawn and the attack's initial tokens")] = 0
    gradient_checkpointing: Annotated[bool, Field(
        description="recompute text-encoder / UNet activations in the backward pass (less memory, slower; same "
                    "result)")] = False


# ---------------------------------------------------------------------------------------------- text side
def text_encoder_parameters(encoder: torch.nn.Module, layers: list[int] | None, final_norm: bool) -> list[str]:
    """Names of the encoder parameters AdvUnlearn trains: the transformer layers (all, or ``layers``) and,
    with ``final_norm``, the final layer norm; never the token or position embeddings."""
    names = []
    for name, _ in encoder.named_parameters():
        bare = name.removeprefix("text_model.")  # transformers < 5 nests the parts under text_model
        if bare.startswith("encoder.layers."):
            index = int(bare.split(".")[2])
            if layers is None or index in layers:
                names.append(name)
        elif bare.startswith("final_layer_norm.") and final_norm:
            names.append(name)
    if not names:
        raise ConfigError(f"advunlearn: no text-encoder parameter to train (train_layers={layers}, "
                          f"train_final_norm={final_norm}); the encoder has layers "
                          f"0..{_layer_count(encoder) - 1}")
    return names


def _layer_count(encoder: torch.nn.Module) -> int:
    return int(getattr(encoder.config, "num_hidden_layers", 0))


@contextlib.contextmanager
def soft_tokens(encoder: torch.nn.Module, slots: slice | None, values: torch.Tensor | None) -> Iterator[None]:
    """While active, the token embeddings at positions ``slots`` are replaced by ``values`` (k, dim): the
    encoder then runs its own forward (positions, causal mask, final norm) on a prompt with soft tokens.
    A forward hook on a private copy's embedding table, so nothing of the shared pipeline is touched."""
    if slots is None or values is None:
        yield
        return

    def splice(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        batch = output.shape[0]
        adv = values.to(output.dtype).unsqueeze(0).expand(batch, -1, -1)
        return torch.cat([output[:, :slots.start], adv, output[:, slots.stop:]], dim=1)

    handle = encoder.get_input_embeddings().register_forward_hook(splice)
    try:
        yield
    finally:
        handle.remove()


def laid_out(tokenizer, text: str, k: int) -> tuple[torch.Tensor, slice]:
    """``BOS, k slots, tokens(text), EOS, pad`` at the tokenizer's length (the text cut if it does not fit
    after the k slots), and the slots' positions. The slot ids are placeholders (the first text token)."""
    length = int(tokenizer.model_max_length)
    content = list(tokenizer(text, truncation=False, add_special_tokens=False).input_ids)
    content = content[:max(0, length - 2 - k)]
    filler = content[0] if content else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *([filler] * k), *content, tokenizer.eos_token_id]
    ids += [pad] * (length - len(ids))
    return torch.tensor([ids[:length]]), slice(1, 1 + k)


def token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """Ids as the pipeline lays prompts out (padded to the tokenizer's length, truncated)."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def searchable_ids(tokenizer) -> torch.Tensor:
    """Vocabulary ids an attack may start from: every id but the special tokens."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)


def encode(encoder: torch.nn.Module, ids: torch.Tensor, slots: slice | None = None,
           adv: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (what the UNet reads) of ``ids``, with soft tokens ``adv`` at ``slots``."""
    device = next(encoder.parameters()).device
    with soft_tokens(encoder, slots, adv):
        return encoder(ids.to(device))[0]


# ---------------------------------------------------------------------------------------------- samples
@dataclass
class Pool:
    """Frozen-model states along DDIM trajectories: ``x[s, n]`` the latents entering step ``s`` of
    trajectory ``n`` (timestep ``t[s]``), with the frozen unconditional and conditional predictions."""

    t: torch.Tensor  # (S,)
    x: torch.Tensor  # (S, N, C, h, w)
    e_0: torch.Tensor | None  # (S, N, C, h, w); None where unused (retain prompts)
    e_c: torch.Tensor  # (S, N, C, h, w)

    @property
    def steps(self) -> int:
        return int(self.t.shape[0])

    @property
    def size(self) -> int:
        return int(self.x.shape[1])


@torch.no_grad()
def frozen_pool(pipe, prompts: list[str], *, ddim_steps: int, guidance: float, generator: torch.Generator,
                keep_uncond: bool, chunk: int = 32, backoff: Backoff | None = None) -> Pool:
    """One guided DDIM trajectory per entry of ``prompts`` with the frozen UNet and text encoder, every
    step's input latents and predictions kept (on the CPU, in the UNet's dtype). Sampled in chunks of
    ``backoff``'s size (``chunk`` without one), halved on out-of-memory."""
    from diffusers import DDIMScheduler

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    # A fresh scheduler: the pipeline's own stays untouched.
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(ddim_steps, device=device)
    size = unet.config.sample_size
    empty = pipe.encode_prompt([""], device, 1, False)[0].to(dtype)
    # Every start code is drawn before any sampling, in the order and pieces of ``chunk`` it always was, so
    # a chunk halved on out-of-memory (or retried) samples the same trajectories.
    noise = torch.cat([torch.randn((len(prompts[i:i + chunk]), unet.config.in_channels, size, size),
                                   generator=generator) for i in range(0, len(prompts), chunk)])
    xs, e0s, ecs = [], [], []

    def sample(rows: range) -> None:
        part = prompts[rows.start:rows.stop]
        n = len(part)
        cond = pipe.encode_prompt(part, device, 1, False)[0].to(dtype)
        uncond = empty.expand(n, -1, -1)
        latents = noise[rows.start:rows.stop].to(device, dtype)
        latents = latents * scheduler.init_noise_sigma
        x_steps, e0_steps, ec_steps = [], [], []
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t)
            e_u, e_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            x_steps.append(x.cpu())
            ec_steps.append(e_c.cpu())
            if keep_uncond:
                e0_steps.append(e_u.cpu())
            latents = scheduler.step(e_u + guidance * (e_c - e_u), t, latents).prev_sample
        xs.append(torch.stack(x_steps))
        ecs.append(torch.stack(ec_steps))
        if keep_uncond:
            e0s.append(torch.stack(e0_steps))

    (backoff or Backoff(chunk, "advunlearn frozen pool")).run(range(len(prompts)), sample)
    return Pool(t=scheduler.timesteps.cpu(), x=torch.cat(xs, 1), e_0=torch.cat(e0s, 1) if keep_uncond else None,
                e_c=torch.cat(ecs, 1))


# ---------------------------------------------------------------------------------------------- training
@dataclass
class Settings:
    iterations: int
    lr: float
    attack: str
    attack_steps: int
    attack_lr: float
    tokens: int
    attack_init: str
    warmup: int
    retain_weight: float
    retain_batch: int
    eta: float
    sample_guidance: float
    ddim_steps: int
    pool: int
    train_layers: list[int] | None
    train_final_norm: bool
    seed: int
    gradient_checkpointing: bool = False  # memory only (not a training setting)


@dataclass
class Concept:
    """A concept prompt: its layout with k attack slots, its plain ids, and its frozen-model pool."""

    text: str
    adv_ids: torch.Tensor
    slots: slice
    plain_ids: torch.Tensor
    pool: Pool


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(prediction.float(), target.float())


def _predict(unet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return unet(x.to(unet.device, unet.dtype), t.to(unet.device),
                encoder_hidden_states=cond.to(unet.dtype)).sample


def inner_attack(encoder, unet, concept: Concept, init: torch.Tensor, *, method: str, steps: int, lr: float,
                 rng: random.Random) -> tuple[torch.Tensor, float]:
    """The k soft tokens (k, dim) that, prepended to the concept prompt, make the UNet under ``encoder``
    predict the frozen model's concept noise e_c (minimised MSE, a fresh pool state per step). Returns
    them (detached) and the loss of the last step. Gradients reach only the tokens."""
    adv = init.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([adv], lr=lr) if method == "pgd" else None
    loss_value = float("nan")
    for _ in range(steps if method == "pgd" else 1):
        s, n = rng.randrange(concept.pool.steps), rng.randrange(concept.pool.size)
        cond = encode(encoder, concept.adv_ids, concept.slots, adv)
        loss = _mse(_predict(unet, concept.pool.x[s, n:n + 1], concept.pool.t[s], cond), concept.pool.e_c[s, n:n + 1])
        (grad,) = torch.autograd.grad(loss, adv)
        loss_value = loss.item()
        with torch.no_grad():
            if optimizer is None:  # fast AT: one FGSM-style signed step
                adv -= lr * grad.sign()
            else:
                adv.grad = grad
                optimizer.step()
    return adv.detach(), loss_value


def random_tokens(encoder, vocab: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The embeddings of k random vocabulary tokens: the paper's random attack initialisation."""
    table = encoder.get_input_embeddings().weight
    picks = vocab[torch.randint(len(vocab), (k,), generator=generator)]
    return table[picks.to(table.device)].detach().float()


def train_advunlearn(pipe, concepts: list[str], retain: list[str], s: Settings, what: str = "advunlearn",
                     hint: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adversarially train a copy of ``pipe.text_encoder`` (the pipeline is left untouched); returns the
    delta ``{"text_encoder.<name>": trained - base}`` and training statistics (with ``oom_backoffs`` when a
    batch was halved). ``what`` names the work in out-of-memory events, ``hint`` says what to do when one
    item does not fit."""
    hint = hint or memory_hint("defense", "advunlearn", s)
    pool_backoff = Backoff(32, f"{what} frozen pool", hint=hint)
    frozen = pipe.text_encoder
    unet = pipe.unet
    tokenizer = pipe.tokenizer
    names = text_encoder_parameters(frozen, s.train_layers, s.train_final_norm)  # a bad choice fails before work
    generator = torch.Generator("cpu").manual_seed(s.seed)
    rng = random.Random(s.seed)

    # Frozen-model samples: `pool` trajectories per concept prompt, one per retain prompt.
    pools = {c: frozen_pool(pipe, [c] * s.pool, ddim_steps=s.ddim_steps, guidance=s.sample_guidance,
                            generator=generator, keep_uncond=True, backoff=pool_backoff) for c in concepts}
    retain_pool = None
    if retain and s.retain_batch and s.retain_weight:
        retain_pool = frozen_pool(pipe, retain, ddim_steps=s.ddim_steps, guidance=s.sample_guidance,
                                  generator=generator, keep_uncond=False, backoff=pool_backoff)
    retain_ids = token_ids(tokenizer, retain) if retain else None
    entries = {}
    for c in concepts:
        adv_ids, slots = laid_out(tokenizer, c, s.tokens)
        entries[c] = Concept(c, adv_ids, slots, token_ids(tokenizer, [c]), pools[c])

    student = copy.deepcopy(frozen).float()
    student.requires_grad_(False)
    student.eval()  # CLIP has no dropout at the defaults; eval keeps any variant deterministic
    params = dict(student.named_parameters())
    trainable = [params[n] for n in names]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable, lr=s.lr)
    vocab = searchable_ids(tokenizer)

    unlearn_losses: list[float] = []
    retain_losses: list[float] = []
    attack_losses: list[float] = []
    adv: torch.Tensor | None = None
    # A step's retain prompts run in micro-batches when they do not fit together; see ``share``.
    micro = Backoff(max(1, s.retain_batch), f"{what} retain prompts per step", hint=hint)
    parts: dict[str, float] = {}

    def reset() -> None:
        parts.clear()
        optimizer.zero_grad(set_to_none=True)

    def share(rows: slice, concept: Concept, step: int, n: int, picks: list[int], attacked: bool) -> torch.Tensor:
        """The step's loss ``l_u + gamma l_r`` restricted to the retain prompts ``picks[rows]``: their share of
        ``l_r`` (mean times their fraction of the step's prompts), plus ``l_u`` once, with the first rows."""
        pool = concept.pool
        loss = torch.zeros((), device=unet.device)
        if rows.start == 0:
            e_0, e_c = pool.e_0[step, n:n + 1], pool.e_c[step, n:n + 1]
            target = e_0.float() - s.eta * (e_c.float() - e_0.float())
            if attacked:
                cond = encode(student, concept.adv_ids, concept.slots, adv)
            else:
                cond = encode(student, concept.plain_ids)
            loss_u = _mse(_predict(unet, pool.x[step, n:n + 1], pool.t[step], cond), target.to(unet.device))
            parts["u"] = loss_u.item()
            loss = loss + loss_u
        if picks:
            mine = picks[rows]
            cond_r = encode(student, retain_ids[mine])
            loss_r = _mse(_predict(unet, retain_pool.x[step, mine], retain_pool.t[step], cond_r),
                          retain_pool.e_c[step, mine].to(unet.device))
            weight = len(mine) / len(picks)
            parts["r"] = parts.get("r", 0.0) + loss_r.item() * weight
            loss = loss + s.retain_weight * loss_r * weight
        return loss

    # Gradients pass through the trained encoder and the frozen UNet; checkpointing both saves the most.
    with checkpointing(student, unet, enabled=s.gradient_checkpointing):
        for i in tqdm(range(s.iterations), desc="AdvUnlearn", unit="it", leave=False):
            concept = entries[concepts[rng.randrange(len(concepts))]]
            attacked = i >= s.warmup
            if attacked:
                for p in trainable:  # the inner problem sees the encoder as fixed
                    p.requires_grad_(False)
                init = adv if (s.attack_init == "latest" and adv is not None) else random_tokens(
                    student, vocab, s.tokens, generator)
                adv, attack_loss = inner_attack(student, unet, concept, init, method=s.attack, steps=s.attack_steps,
                                                lr=s.attack_lr, rng=rng)
                attack_losses.append(attack_loss)
                for p in trainable:
                    p.requires_grad_(True)
            # The step's draws come first, so a step restarted after an out-of-memory error reuses them.
            step, n = rng.randrange(concept.pool.steps), rng.randrange(concept.pool.size)
            picks: list[int] = []
            if retain_pool is not None:
                picks = rng.sample(range(retain_pool.size), min(s.retain_batch, retain_pool.size))
            reset()
            micro.accumulate(max(1, len(picks)), lambda rows, c=concept, k=step, j=n, p=picks, a=attacked:
                             share(rows, c, k, j, p, a), reset)
            optimizer.step()
            unlearn_losses.append(parts["u"])
            if picks:
                retain_losses.append(parts["r"])

    base = dict(frozen.named_parameters())
    delta = {f"text_encoder.{n}": (params[n].detach().float() - base[n].detach().float()).cpu() for n in names}
    stats = {"trained_parameters": len(delta), "trained_values": int(sum(v.numel() for v in delta.values())),
             "unlearn_loss_first": _mean(unlearn_losses[:10]), "unlearn_loss_last": _mean(unlearn_losses[-10:]),
             "retain_loss_first": _mean(retain_losses[:10]), "retain_loss_last": _mean(retain_losses[-10:]),
             "attack_rounds": len(attack_losses), "attack_loss_first": _mean(attack_losses[:10]),
             "attack_loss_last": _mean(attack_losses[-10:]), "retain_prompts": len(retain)}
    events = pool_backoff.events + micro.events
    return delta, {**stats, "oom_backoffs": events} if events else stats


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------------------------- the defense
@DEFENSES.register("advunlearn")
class AdvUnlearn(Defense):
    """AdvUnlearn (Zhang et al. 2024): adversarial training of the text encoder (ESD loss on soft-token attacks + retain loss)."""

    kind = DefenseKind.WEIGHT_EDIT
    Options = AdvUnlearnOptions
    runtime_options = ("gradient_checkpointing",)  # memory only: not in the cache key
    # The per-model defaults enter the cache key ("defaults"): changing them retrains (the retain file enters
    # by its content, as every FilePath option).
    presets = Presets({"paper": PAPER, "sd-mini": SD_MINI}, by_model={"sd-mini": "sd-mini"})

    def settings(self, model_name: str) -> Settings:
        """Every training setting, the ones left unset taken from the model's preset."""
        o, v = self.options, self.preset_values(model_name)
        return Settings(iterations=v["iterations"], lr=v["lr"], attack=o.attack,
                        attack_steps=v["attack_steps"], attack_lr=v["attack_lr"], tokens=v["tokens"],
                        attack_init=o.attack_init, warmup=v["warmup"], retain_weight=o.retain_weight,
                        retain_batch=o.retain_batch, eta=o.eta, sample_guidance=o.sample_guidance,
                        ddim_steps=v["ddim_steps"], pool=o.pool,
                        train_layers=None if o.train_layers is None else sorted(set(o.train_layers)),
                        train_final_norm=o.train_final_norm, seed=o.seed,
                        gradient_checkpointing=o.gradient_checkpointing)

    def concepts(self, task) -> list[str]:
        """The concept prompts: the option, else the task's concept words; a :class:`ConfigError` when empty."""
        concepts = [self.options.prompt] if self.options.prompt else list(task.concept_words)
        if not concepts:
            raise ConfigError(f"defense 'advunlearn' needs the concept to erase, and task '{task.name}' has no "
                              "concept_words: pass --option defense:advunlearn.prompt=...")
        return concepts

    def retain_prompts(self, model_name: str, task, concepts: list[str]) -> tuple[list[str], str]:
        """The retain prompts and where they come from: the option's file, sd-mini's own training split for
        its tasks, else the built-in list; any containing a concept word is dropped."""
        limit = self.options.retain_prompts
        if self.options.retain_file:
            texts, source = self._retain_file(limit), f"file {self.options.retain_file}"
        elif draws_world(model_name) and _is_mini_task(task.name):
            _, benign = training_split(task.name, 1, limit, seed=1)
            texts, source = [p.text for p in benign], f"sd-mini training_split({task.name!r}, seed=1) benign"
        else:
            texts, source = list(BUILTIN_RETAIN)[:limit], "built-in list"
        named = re.compile("|".join(rf"\b{re.escape(c.lower())}\b" for c in concepts))
        kept = [t for t in texts if not named.search(t.lower())]
        return kept, source

    def _retain_file(self, limit: int | None = None) -> list[str]:
        from prompts import load_prompt_file  # deferred: listing the defense must stay light

        path = Path(self.options.retain_file).expanduser()
        if not path.is_file():
            raise DataFileError(f"advunlearn: retain_file {str(path)!r} does not exist; pass a CSV/TSV/JSON/TXT "
                                "file of retain prompts (column 'prompt'), or leave the option out")
        texts = [p.text for p in load_prompt_file(path, limit=limit) if p.text.strip()]
        if not texts:
            raise DataFileError(f"advunlearn: retain_file {str(path)!r} holds no prompt")
        return texts

    def check_inputs(self, ctx) -> None:
        self.concepts(ctx.task)
        if self.options.retain_file:
            self._retain_file()
        o = self.options
        if o.warmup is not None and o.iterations is not None and o.warmup > o.iterations:
            log.warning("advunlearn: warmup %d >= iterations %d: no adversarial step will run (plain ESD on the "
                        "text encoder)", o.warmup, o.iterations)

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        settings = self.settings(ctx.model.name)
        concepts = self.concepts(ctx.task)
        retain, source = self.retain_prompts(ctx.model.name, ctx.task, concepts)
        start = time.perf_counter()
        delta, stats = train_advunlearn(ctx.model.pipe, concepts, retain, settings,
                                        what=f"prepare {self.name} {ctx.task.name}",
                                        hint=memory_hint("defense", self.name, self.options))
        save_edit(artifact_file(ctx.artifact_dir, DELTA_FILE), delta,
                  {"defense": self.name, "prompts": ", ".join(concepts), "component": "text_encoder"})
        return {"train_seconds": time.perf_counter() - start, "prompts": concepts, "retain_source": source,
                **stats, **{k: v for k, v in vars(settings).items() if k not in ("seed", "gradient_checkpointing")}}

    def apply(self, model, task, artifact_dir: Path) -> WeightEditPipeline:
        path = artifact_file(artifact_dir, DELTA_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"advunlearn: no trained delta in {artifact_dir}; run the prepare stage first")
        return WeightEditPipeline(model, self, task, load_edit(path), as_delta=True)


def _is_mini_task(name: str) -> bool:
    return name in MINI_TASKS
