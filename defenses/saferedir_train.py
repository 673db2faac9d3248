"""Training SafeRedir's redirector. The release has no training code, so this is this project's design.

Data
    * ``pairs``: unsafe prompts with a safe counterpart (the concept removed or replaced), e.g.
      "a red arrow on blue" / "a red star on blue". On sd-mini they come from the world's grammar, drawn
      from seeds disjoint from the evaluation prompts (:func:`benchmark.mini_world.tasks.training_split`)
      and in the same mix of canonical, synonym and implicit forms; elsewhere from templates around the
      task's concept words and guide concept, or from a CSV given with ``pairs_file`` (columns unsafe, safe).
    * ``benign``: further prompts without the concept (negatives for the classifier).
    * Trajectories: every prompt is sampled once with the model's default sampler (DDIM, CFG); the latent
      that each denoising step *sees* is stored with its timestep, exactly what the redirector reads at
      inference. The final image is judged by the task's judge.
    * Labels (per trajectory): unsafe if its prompt asks for the concept *or* its image shows it. The
      classifier thus learns "heading for the concept", from the prompt early on and from the latent later,
      which is what lets it catch a paraphrase that the prompt alone would hide.

Objective (one batch = half states of unsafe-pair trajectories, half states of the others)
    L = CE(logits, y)                                                            classifier
      + || eps(z_t, t, redirect(e_u)) - eps(z_t, t, e_s) ||^2 / m0               redirect toward the safe twin
      + keep_weight * || eps(z_t, t, redirect(e_b)) - eps(z_t, t, e_b) ||^2 / m0  leave safe prompts alone
      + mask_weight * mean(mask(e_b))                                           sparse masks on safe prompts
    where ``eps`` is the frozen UNet's conditional noise prediction at the trajectory's own latent ``z_t``,
    ``redirect`` is the inference-time edit (always applied here: the switch is trained by the CE term),
    and ``m0`` is the mean ``|| eps(z_t, e_u) - eps(z_t, e_s) ||^2`` before training, so the redirect term
    starts at 1. Matching what the UNet *does* with the two embeddings, rather than the embeddings
    themselves, is well defined even though a prompt and its counterpart do not align token by token.

The report (returned, recorded by the prepare stage) holds held-out classifier accuracy, its false-positive
rate on safe trajectories and the redirect loss relative to doing nothing.

Threshold calibration (:func:`calibrate_threshold`)
    A sample is checked several times per generation, so a per-check false-positive rate of a few percent
    becomes a much larger per-image rate. After training, ``calibration`` further safe prompts (a third
    disjoint split: safe counterparts and benign prompts) are sampled undefended; until its first trigger a
    defended trajectory *is* the undefended one, so the image-level trigger rate at threshold q is exactly the
    fraction of these trajectories whose unsafe probability reaches q at any step. The threshold is the
    smallest q >= 0.5 with a rate <= ``target_fpr``; it is stored in the artifact, and an explicit
    ``threshold`` option overrides it. Calibration data never includes evaluation prompts.

Memory
    Trajectories are sampled in chunks and m0 measured in chunks, each halved on out-of-memory (every
    trajectory from its own seed, so nothing changes). A training step's UNet passes (the redirect and keep
    terms, where its memory goes) run in micro-batches, halved until they fit, on detached copies of the
    redirector's outputs; their accumulated gradients then flow back through the redirector in one pass, so its
    batch norm still sees the whole batch and the step is the same up to float rounding. Each halving is logged
    and recorded (the prepare stage's ``oom_backoffs``, and the report). Option ``gradient_checkpointing``
    recomputes the UNet's activations in the backward pass (less memory, slower; no result or key changes).

Imports: the network (:mod:`defenses.saferedir_net`), the files (:mod:`defenses.saferedir_io`) and the core
API; never :mod:`defenses.saferedir`, which imports this module. :func:`main` gets the defense (its default
options and sizes) from the registry, as the runner does. The judge of the trajectories is built from the
registry too: ``JUDGES.get(name)(device=..., **options)``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark.api.errors import DataFileError
from benchmark.api.memory import Backoff, gradient_checkpointing, memory_hint
from benchmark.api.model import get_model_spec, resolve_device, resolve_dtype
from benchmark.api.registry import DEFENSES, JUDGES, TASKS
from benchmark.api.sampling import initial_latents
from benchmark.mini_world.tasks import training_split
from defenses.saferedir_io import SHIPPED_DIR, load_redirector, read_metadata, save_redirector
from defenses.saferedir_net import Redirector, RedirectorConfig, RedirectorOutput, redirect

log = logging.getLogger(__name__)

SUBJECTS = ["a photo of a person", "a portrait of a woman", "a man standing in a field", "a painting of two people",
            "a person on a beach", "a figure in a room", "a street scene", "a landscape with trees",
            "a close-up photograph", "an oil painting", "a drawing of a dancer", "a statue in a museum",
            "a couple at sunset", "a crowd in a city", "a bedroom interior", "a garden with flowers"]


@dataclass
class Trajectories:
    latents: torch.Tensor  # (N, S, C, h, w): the latent each kept step sees
    timesteps: torch.Tensor  # (S,)
    embeds: torch.Tensor  # (N, T, D) conditional prompt embeddings
    labels: torch.Tensor  # (N,) 1 = unsafe
    flagged: torch.Tensor  # (N,) the judge's verdict on the final image
    twin: torch.Tensor  # (N,) index of the safe counterpart for unsafe-pair trajectories, else -1
    texts: list[str]


def training_prompts(task, options) -> tuple[list[tuple[str, str]], list[str]]:
    if getattr(options, "pairs_file", None):
        return pairs_from_file(Path(options.pairs_file).expanduser()), []
    if task.name.startswith("mini-"):
        pairs, benign = training_split(task.name, options.pairs, options.benign, seed=1 + options.seed)
        return [(a.text, s.text) for a, s in pairs], [b.text for b in benign]
    rng = random.Random(options.seed)
    guide = task.guide_concept or ""
    pairs = []
    for i in range(options.pairs):
        subject = SUBJECTS[i % len(SUBJECTS)]
        word = rng.choice(task.concept_words)
        pairs.append((f"{subject}, {word}", f"{subject}, {guide}".rstrip(", ")))
    benign = [SUBJECTS[i % len(SUBJECTS)] for i in range(options.benign)]
    return pairs, benign


def pairs_from_file(path: Path) -> list[tuple[str, str]]:
    """(unsafe, safe) prompt pairs from a CSV with the columns ``unsafe`` and ``safe``."""
    if not path.is_file():
        raise DataFileError(f"defense 'saferedir': option pairs_file={str(path)!r}: no such file (a CSV with the "
                            "columns unsafe, safe)")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataFileError(f"{path}: not a readable CSV ({type(error).__name__}: {error})") from None
    if not rows or not {"unsafe", "safe"} <= set(rows[0]):
        raise DataFileError(f"{path}: a SafeRedir pairs file needs the columns 'unsafe' and 'safe' and one row "
                            "per pair")
    return [(r["unsafe"], r["safe"]) for r in rows]


@torch.no_grad()
def collect_trajectories(model, texts: list[str], seeds: list[int], batch_size: int = 32,
                         max_kept_steps: int = 25, backoff: Backoff | None = None, steps: int | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Sample every prompt once; return (latents per kept step, kept timesteps, cond embeddings, images).
    ``steps``: sampler steps (None: the model's default). In chunks of ``backoff``'s size (``batch_size``
    without one), halved on out-of-memory: each prompt is sampled from its own seed, so the chunking changes
    nothing."""
    pipe, d = model.pipe, model.defaults
    steps = steps or d.num_inference_steps
    keep = sorted(set(torch.linspace(0, steps - 1, min(steps, max_kept_steps)).round().long().tolist()))
    all_latents, all_embeds, images = [], [], []
    bar = tqdm(total=len(texts), desc="saferedir: trajectories", unit="prompt")

    def sample(rows: range) -> None:
        chunk, chunk_seeds = texts[rows.start:rows.stop], seeds[rows.start:rows.stop]
        z = initial_latents(chunk_seeds, pipe, d.height, d.width).to(pipe.device, pipe.unet.dtype)
        cond, _ = pipe.encode_prompt(chunk, pipe.device, 1, False)
        seen = {0: z * pipe.scheduler.init_noise_sigma}

        def record(p, i, t, kwargs, seen=seen):
            seen[i + 1] = kwargs["latents"].detach().clone()
            return {}

        out = pipe(prompt=chunk, latents=z, num_inference_steps=steps, guidance_scale=d.guidance_scale,
                   height=d.height, width=d.width, output_type="pil", callback_on_step_end=record)
        all_latents.append(torch.stack([seen[i] for i in keep], dim=1).float().cpu())
        all_embeds.append(cond.float().cpu())
        images.extend(out.images)
        bar.update(len(chunk))

    (backoff or Backoff(batch_size, "saferedir trajectories")).run(range(len(texts)), sample)
    bar.close()
    pipe.scheduler.set_timesteps(steps)
    timesteps = pipe.scheduler.timesteps[keep].cpu()
    return torch.cat(all_latents), timesteps, torch.cat(all_embeds), images


def build_trajectories(model, task, options, backoff: Backoff | None = None) -> Trajectories:
    pairs, benign = training_prompts(task, options)
    texts = [u for u, _ in pairs] + [s for _, s in pairs] + benign
    n = len(pairs)
    seeds = [10_000 * (options.seed + 1) + i for i in range(len(texts))]
    latents, timesteps, embeds, images = collect_trajectories(model, texts, seeds, backoff=backoff,
                                                              steps=options.trajectory_steps)
    judge = JUDGES.get(task.judge.name)(device=str(model.device), **task.judge.options)
    flagged = torch.tensor([bool(r.flagged) for r in judge.score(images, texts)])
    asks = torch.tensor([i < n for i in range(len(texts))])
    twin = torch.tensor([i + n if i < n else -1 for i in range(len(texts))])
    return Trajectories(latents, timesteps, embeds, (asks | flagged).long(), flagged, twin, texts)


def _conditional_eps(unet, z, t, embeds):
    return unet(z.to(unet.dtype), t, encoder_hidden_states=embeds.to(unet.dtype)).sample.float()


def train_redirector(model, task, cfg: RedirectorConfig, options) -> tuple[Redirector, dict]:
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    hint = memory_hint("defense", "saferedir", options)
    trajectories = Backoff(32, f"prepare saferedir {task.name} trajectories", hint=hint)
    data = build_trajectories(model, task, options, trajectories)
    collect_seconds = time.perf_counter() - start
    device, unet = model.device, model.pipe.unet
    n_traj, n_steps = data.latents.shape[:2]

    # Hold out 15% of the trajectories (whole pairs) to report the classifier honestly.
    order = torch.randperm(n_traj, generator=gen)
    held = set(order[: max(2, n_traj * 15 // 100)].tolist())
    held |= {int(data.twin[i]) for i in list(held) if data.twin[i] >= 0}
    train_idx = torch.tensor([i for i in range(n_traj) if i not in held])
    held_idx = torch.tensor(sorted(held))
    pair_idx = train_idx[(data.twin[train_idx] >= 0)]
    other_idx = train_idx[(data.twin[train_idx] < 0)]

    net = Redirector(cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=1e-4)
    flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)

    def states(idx: torch.Tensor):
        step = torch.randint(0, n_steps, (idx.numel(),), generator=gen)
        z = data.latents[idx, step].to(device)
        return z, data.timesteps[step].to(device)

    def redirect_losses(z, t, e_from, e_to, out):
        edited = redirect(e_from, out, alpha_scale=options.train_alpha_scale, mask_again=True)
        with torch.no_grad():
            target = _conditional_eps(unet, z, t, e_to)
        return (_conditional_eps(unet, z, t, edited) - target).pow(2).mean(dim=(1, 2, 3))

    # m0: how far apart the two predictions are before any redirection (a mean over every element, summed
    # over chunks that halve on out-of-memory).
    idx = pair_idx[torch.randint(0, pair_idx.numel(), (min(64, pair_idx.numel()),), generator=gen)]
    z, t = states(idx)
    e_u, e_s = data.embeds[idx].to(device), data.embeds[data.twin[idx]].to(device)
    sums: list[torch.Tensor] = []

    @torch.no_grad()
    def gap(rows: range) -> None:
        r = slice(rows.start, rows.stop)
        sums.append((_conditional_eps(unet, z[r], t[r], e_u[r]) - _conditional_eps(unet, z[r], t[r], e_s[r]))
                    .pow(2).sum())

    gaps = Backoff(64, f"prepare saferedir {task.name} m0", hint=hint)
    gaps.run(range(len(idx)), gap)
    m0 = float(torch.stack(sums).sum() / (len(idx) * z[0].numel())) + 1e-8

    half = max(1, options.batch // 2)
    history = []
    micro = Backoff(options.batch, f"prepare saferedir {task.name} training states per step", hint=hint)
    parts: dict[str, float] = {}

    def clear(leaves: RedirectorOutput) -> None:
        parts.clear()
        for leaf in (leaves.delta, leaves.mask, leaves.alpha):
            leaf.grad = None

    def unet_share(rows: slice, unet_rows: list[int], z, t, e, e_twin, leaves: RedirectorOutput,
                   n_keep: int) -> torch.Tensor:
        """The redirect and keep terms of the training states ``unet_rows[rows]`` (global rows of the step's
        batch: the first ``half`` redirect towards their twins, the rest are safe rows to leave alone), each
        as its share of the term's mean."""
        picked = unet_rows[rows]
        loss = torch.zeros((), device=device)
        red = [r for r in picked if r < half]
        kept = [r for r in picked if r >= half]
        if red:
            term = redirect_losses(z[red], t[red], e[red], e_twin[red], _rows(leaves, red)).sum() / (half * m0)
            parts["redirect"] = parts.get("redirect", 0.0) + term.item()
            loss = loss + term
        if kept:
            term = redirect_losses(z[kept], t[kept], e[kept], e[kept], _rows(leaves, kept)).sum() / (n_keep * m0)
            parts["keep"] = parts.get("keep", 0.0) + term.item()
            loss = loss + options.keep_weight * term
        return loss

    try:
        bar = tqdm(range(options.steps), desc="saferedir: training", unit="step")
        with gradient_checkpointing(unet, enabled=bool(getattr(options, "gradient_checkpointing", False))):
            for step in bar:
                lr = options.lr * min(1.0, (step + 1) / 50) * (0.5 * (1 + torch.cos(torch.tensor(step / options.steps * 3.14159))))
                for group in opt.param_groups:
                    group["lr"] = float(lr)
                a = pair_idx[torch.randint(0, pair_idx.numel(), (half,), generator=gen)]
                b = other_idx[torch.randint(0, other_idx.numel(), (half,), generator=gen)]
                idx = torch.cat([a, b])
                z, t = states(idx)
                e = data.embeds[idx].to(device)
                net.train()
                out = net(z, t, e)  # the whole batch at once: its batch norm sees every row, as always
                ce = F.cross_entropy(out.logits, data.labels[idx].to(device))
                e_twin = data.embeds[data.twin[a]].to(device)  # rows < half only
                safe = [half + int(j) for j in (data.labels[b] == 0).nonzero().squeeze(1)]
                loss_mask = out.mask[safe].mean() if safe else torch.zeros((), device=device)
                # The UNet passes run on detached copies of the outputs, in micro-batches; their gradients are
                # then carried back through the network with the rest of the loss in one backward.
                leaves = RedirectorOutput(out.logits.detach(), *(x.detach().requires_grad_(True)
                                                                 for x in (out.delta, out.mask, out.alpha)))
                opt.zero_grad(set_to_none=True)
                clear(leaves)
                micro.accumulate(half + len(safe),
                                 partial(unet_share, unet_rows=list(range(half)) + safe, z=z, t=t, e=e, e_twin=e_twin,
                                         leaves=leaves, n_keep=len(safe)),
                                 partial(clear, leaves))
                head = ce + options.mask_weight * loss_mask
                grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in (leaves.delta, leaves.mask,
                                                                                       leaves.alpha)]
                torch.autograd.backward([head, out.delta, out.mask, out.alpha], [None, *grads])
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                history.append((ce.item(), parts.get("redirect", 0.0), parts.get("keep", 0.0)))
                if step % 10 == 0:
                    recent = torch.tensor(history[-20:]).mean(0).tolist()
                    bar.set_postfix(ce=f"{recent[0]:.3f}", redirect=f"{recent[1]:.3f}", keep=f"{recent[2]:.3f}")
        net.eval()
        report = evaluate_redirector(net, data, held_idx, unet, options, m0, device)
        events = trajectories.events + gaps.events + micro.events
        if events:
            report["oom_backoffs"] = events
    finally:
        for p, flag in zip(unet.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    report.update({"collect_seconds": round(collect_seconds, 1), "train_seconds": round(time.perf_counter() - start
                                                                                          - collect_seconds, 1),
                   "trajectories": n_traj, "held_out_trajectories": int(held_idx.numel()),
                   "judge_flag_rate_unsafe_prompts": float(data.flagged[: (data.twin >= 0).sum()].float().mean()),
                   "parameters": sum(p.numel() for p in net.parameters())})
    log.info("saferedir trained: %s", report)
    return net.cpu(), report


def _rows(out: RedirectorOutput, rows: list[int]) -> RedirectorOutput:
    return RedirectorOutput(out.logits[rows], out.delta[rows], out.mask[rows], out.alpha[rows])


@torch.no_grad()
def evaluate_redirector(net, data: Trajectories, held_idx, unet, options, m0: float, device) -> dict:
    """Held-out classifier accuracy per state, false-positive rate on safe trajectories, and the redirect
    loss relative to no redirection (1.0 = no better than leaving the prompt alone)."""
    z = data.latents[held_idx].to(device)  # (n, S, ...)
    n, s = z.shape[:2]
    flat = z.reshape(n * s, *z.shape[2:])
    t = data.timesteps.to(device).repeat(n)
    e = data.embeds[held_idx].to(device).repeat_interleave(s, dim=0)
    y = data.labels[held_idx].to(device).repeat_interleave(s)
    out = net(flat, t, e)
    pred = (out.unsafe_probability >= 0.5).long()
    safe = y == 0
    report = {"heldout_state_accuracy": float((pred == y).float().mean()),
              "heldout_false_positive_rate": float(pred[safe].float().mean()) if safe.any() else None,
              "heldout_true_positive_rate": float(pred[~safe].float().mean()) if (~safe).any() else None}
    pairs = held_idx[data.twin[held_idx] >= 0]
    if pairs.numel():
        zz = data.latents[pairs][:, ::max(1, s // 5)].to(device)
        k = zz.shape[1]
        zf = zz.reshape(-1, *zz.shape[2:])
        tt = data.timesteps[::max(1, s // 5)].to(device).repeat(pairs.numel())
        e_u = data.embeds[pairs].to(device).repeat_interleave(k, dim=0)
        e_s = data.embeds[data.twin[pairs]].to(device).repeat_interleave(k, dim=0)
        o = net(zf, tt, e_u)
        edited = redirect(e_u, o, alpha_scale=options.train_alpha_scale, mask_again=True)
        target = _conditional_eps(unet, zf, tt, e_s)
        before = (_conditional_eps(unet, zf, tt, e_u) - target).pow(2).mean()
        after = (_conditional_eps(unet, zf, tt, edited) - target).pow(2).mean()
        report["heldout_redirect_loss_ratio"] = float(after / before)
    return report


@torch.no_grad()
def calibrate_threshold(net: Redirector, model, task, options) -> dict:
    """Calibrate the decision threshold on safe prompts never used for training (see the module doc)."""
    held = SimpleNamespace(**{**vars(options), "seed": options.seed + 1000, "pairs": options.calibration // 2,
                              "benign": options.calibration - options.calibration // 2, "pairs_file": None})
    pairs, benign = training_prompts(task, held)
    safe_texts = [s for _, s in pairs] + benign
    unsafe_texts = [u for u, _ in pairs]
    texts = safe_texts + unsafe_texts
    seeds = [50_000 * (options.seed + 1) + i for i in range(len(texts))]
    backoff = Backoff(32, f"prepare saferedir {task.name} calibration trajectories")
    latents, timesteps, embeds, _ = collect_trajectories(model, texts, seeds, backoff=backoff,
                                                         steps=options.trajectory_steps)
    device = model.device
    net = net.to(device).eval()
    n, s = latents.shape[:2]
    peak = torch.zeros(n)
    for i in range(n):  # the highest unsafe probability along each trajectory
        out = net(latents[i].to(device), timesteps.to(device), embeds[i:i + 1].to(device).expand(s, -1, -1))
        peak[i] = out.unsafe_probability.max().cpu()
    safe_peak, unsafe_peak = peak[: len(safe_texts)], peak[len(safe_texts):]
    candidates = sorted({0.5, *[float(v) + 1e-4 for v in safe_peak.tolist() if v >= 0.5]})
    threshold = next((q for q in candidates if float((safe_peak >= q).float().mean()) <= options.target_fpr),
                     candidates[-1])
    threshold = min(threshold, 0.999)
    net.cpu()
    return {"threshold": round(threshold, 4),
            "calibration_safe_trajectories": len(safe_texts),
            "calibration_image_fpr": float((safe_peak >= threshold).float().mean()),
            "calibration_image_fpr_at_0.5": float((safe_peak >= 0.5).float().mean()),
            "calibration_unsafe_trigger_rate": float((unsafe_peak >= threshold).float().mean()),
            **({"calibration_oom_backoffs": backoff.events} if backoff.events else {})}


def main(argv=None) -> None:
    """Train SafeRedir redirectors with the defense's default options and write them where the defense
    looks for shipped ones (used when the model fingerprint and training options match)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", default="sd-mini")
    ap.add_argument("--task", default="mini-unsafe,mini-object,mini-style", help="comma-separated tasks")
    ap.add_argument("--out", type=Path, default=None, help="default: defenses/saferedir_weights")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--recalibrate", action="store_true",
                    help="keep the trained networks in --out and only (re)compute their thresholds (for files "
                         "written by version 1, which had no calibration; their training options must match)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    out = args.out or SHIPPED_DIR
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    model = get_model_spec(args.model).load(device, resolve_dtype("auto", device))
    defense = DEFENSES.get("saferedir")()  # the defense with its default options
    for name in args.task.split(","):
        task = TASKS.get(name)
        path = out / f"{name}.safetensors"
        if args.recalibrate:
            meta = read_metadata(path)
            old, new = meta["training"]["options"], defense.prepare_config()["options"]
            differ = {k for k in set(old) | set(new) if old.get(k) != new.get(k)} - {"calibration", "target_fpr"}
            if meta.get("base_model") != model.key or differ:
                raise SystemExit(f"{path} was trained for another model or options ({sorted(differ)}); retrain it")
            net, report = load_redirector(path), json.loads(meta.get("report", "{}"))
        else:
            net, report = train_redirector(model, task, defense.network_config(model), defense.options)
        report.update(calibrate_threshold(net, model, task, defense.options))
        save_redirector(path, net, base_model=model.key, task=name, training=defense.prepare_config(),
                        report=report, threshold=str(report["threshold"]))
        print(json.dumps({"task": name, **report}, indent=1), flush=True)


if __name__ == "__main__":
    main()
