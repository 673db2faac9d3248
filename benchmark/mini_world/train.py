"""Train every part of sd-mini with one reproducible command.

    python -m benchmark.mini_world.train --out benchmark/mini_world/weights --ckpt runs/mini_ckpt

Stages (each resumable; a finished stage is skipped on rerun): vae -> data -> detector -> clip -> unet -> export.
``--minutes`` is the wall-clock budget of the UNet (+ jointly fine-tuned text encoder) stage; the UNet stage
checkpoints every few minutes and ``--stages export`` exports the latest checkpoint at any time.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import nets
from .lexicon import COLOURS, OBJECTS, STYLES, sample_caption
from .world import render, sample_labels

TRAIN_SEED0 = 1_000_000
DET_EVAL_SEED0 = 9_000_000
STAGES = ["vae", "data", "detector", "clip", "unet", "export"]


def log(msg):
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}")


# ----------------------------------------------------------------------------- data helpers
def scene(seed: int):
    lab = sample_labels(np.random.default_rng(seed))
    return render(lab), lab


def render_batch(seeds):
    imgs, labs = zip(*(scene(int(s)) for s in seeds), strict=False)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return x, list(labs)


def label_vector(lab) -> torch.Tensor:
    v = torch.zeros(len(nets.DETECTOR_LABELS))
    idx = {n: i for i, n in enumerate(nets.DETECTOR_LABELS)}
    v[idx[f"object:{lab['object']}"]] = 1
    v[idx[f"style:{lab['style']}"]] = 1
    v[idx[f"colour:{lab['colour']}"]] = 1
    if lab["gore"]:
        v[idx["gore"]] = 1
    return v


def pack_labels(labs):
    return {
        "object": torch.tensor([OBJECTS.index(lb["object"]) for lb in labs], dtype=torch.int8),
        "colour": torch.tensor([COLOURS.index(lb["colour"]) for lb in labs], dtype=torch.int8),
        "bg": torch.tensor([COLOURS.index(lb["bg"]) for lb in labs], dtype=torch.int8),
        "style": torch.tensor([STYLES.index(lb["style"]) for lb in labs], dtype=torch.int8),
        "gore": torch.tensor([bool(lb["gore"]) for lb in labs], dtype=torch.bool),
    }


def unpack_label(packed, i):
    return {"object": OBJECTS[int(packed["object"][i])], "colour": COLOURS[int(packed["colour"][i])],
            "bg": COLOURS[int(packed["bg"][i])], "style": STYLES[int(packed["style"][i])],
            "gore": bool(packed["gore"][i])}


def judge_batch(imgs: torch.Tensor, recs: torch.Tensor, size: int, g: torch.Generator):
    """Indices and augmented images for a judge step: each image is the render or, half the time, its VAE
    reconstruction, so the judges work on generated images too."""
    idx = torch.randint(0, imgs.shape[0], (size,), generator=g)
    use_rec = torch.rand(size, generator=g) < 0.5
    x = torch.where(use_rec[:, None, None, None], recs[idx], imgs[idx]).float() / 255
    return idx, augment(x, g)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild blur / noise / colour jitter so the judges also work on decoded and generated images."""
    b = x.shape[0]
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    a = torch.rand(b, 1, 1, 1, generator=g) * 0.8
    x = x * (1 - a) + blur * a
    x = x * (1 + (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.12) + (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.06
    x = x + torch.randn(x.shape, generator=g) * torch.rand(b, 1, 1, 1, generator=g) * 0.04
    return x.clamp(0, 1)


class Timer:
    def __init__(self, minutes):
        self.t0 = time.time()
        self.budget = minutes * 60

    def frac(self):
        return min(1.0, (time.time() - self.t0) / max(self.budget, 1e-6))

    def done(self):
        return time.time() - self.t0 >= self.budget


def cosine_lr(opt, base, frac, warm=0.03):
    lr = base * min(1.0, frac / warm) if frac < warm else base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    for gp in opt.param_groups:
        gp["lr"] = lr * gp.get("lr_mult", 1.0)
    return lr


# ----------------------------------------------------------------------------- stage: vae
def stage_vae(args, ck: Path):
    torch.manual_seed(args.seed)
    vae, base_lr = nets.make_vae(), 1e-3
    if (ck / "vae").exists():  # continue a finished VAE stage (run with --force --stages vae): new cosine cycle
        from diffusers import AutoencoderKL

        vae, base_lr = AutoencoderKL.from_pretrained(ck / "vae"), 5e-4
        log("vae: continuing from the existing checkpoint")
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=base_lr, weight_decay=0.0)
    timer = Timer(args.vae_minutes)
    rng = np.random.default_rng(args.seed + 1)
    step = 0
    bar = tqdm(desc="vae", unit="step")
    while not timer.done() and (args.max_steps is None or step < args.max_steps):
        lr = cosine_lr(opt, base_lr, timer.frac())
        x, _ = render_batch(rng.integers(TRAIN_SEED0 + 10_000_000, TRAIN_SEED0 + 20_000_000, size=args.vae_batch))
        post = vae.encode(x * 2 - 1).latent_dist
        rec = (vae.decode(post.sample()).sample + 1) / 2
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        kl = post.kl().mean() / (16 * 16 * 4)
        loss = l1 + mse + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(l1=f"{l1.item():.4f}", kl=f"{kl.item():.2f}", lr=f"{lr:.1e}")
    bar.close()
    vae.eval()
    with torch.no_grad():
        x, _ = render_batch(range(DET_EVAL_SEED0, DET_EVAL_SEED0 + 256))
        z = vae.encode(x * 2 - 1).latent_dist.mean
        sf = float(1.0 / z.std())
        rec = (vae.decode(z).sample + 1) / 2
        psnr = float(-10 * torch.log10((rec.clamp(0, 1) - x).pow(2).mean()))
    vae.register_to_config(scaling_factor=sf)
    vae.save_pretrained(ck / "vae")
    log(f"vae: {step} steps in {time.time() - timer.t0:.0f}s, held-out PSNR {psnr:.2f} dB, scaling_factor {sf:.4f}")
    return {"steps": step, "seconds": time.time() - timer.t0, "psnr": psnr, "scaling_factor": sf}


def load_vae(ck: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(ck / "vae").eval()


# ----------------------------------------------------------------------------- stage: data
def stage_data(args, ck: Path):
    t0 = time.time()
    vae = load_vae(ck)
    sf = vae.config.scaling_factor
    n, nimg = args.n_latents, args.n_judge
    lat = torch.empty(n, 4, 16, 16, dtype=torch.float16)
    imgs = torch.empty(nimg, 3, 64, 64, dtype=torch.uint8)
    recs = torch.empty(nimg, 3, 64, 64, dtype=torch.uint8)
    labs_all = []
    bs = 256
    with torch.no_grad():
        for i in tqdm(range(0, n, bs), desc="data: render+encode", unit="batch"):
            seeds = range(TRAIN_SEED0 + i, TRAIN_SEED0 + min(n, i + bs))
            x, labs = render_batch(seeds)
            labs_all += labs
            z = vae.encode(x * 2 - 1).latent_dist.mean
            lat[i:i + len(labs)] = (z * sf).half()
            if i < nimg:
                k = min(len(labs), nimg - i)
                imgs[i:i + k] = (x[:k] * 255).round().to(torch.uint8)
                rec = ((vae.decode(z[:k]).sample + 1) / 2).clamp(0, 1)
                recs[i:i + k] = (rec * 255).round().to(torch.uint8)
    torch.save({"latents": lat, "labels": pack_labels(labs_all), "images": imgs, "recons": recs}, ck / "data.pt")
    log(f"data: {n} latents (std {lat.float().std():.3f}), {nimg} images+recons in {time.time() - t0:.0f}s")
    return {"seconds": time.time() - t0, "n_latents": n, "n_judge_images": nimg}


def eval_set(ck: Path, n=2000):
    """Held-out renders (seeds never used in training) and their VAE reconstructions."""
    vae = load_vae(ck)
    x, labs = render_batch(range(DET_EVAL_SEED0, DET_EVAL_SEED0 + n))
    with torch.no_grad():
        recs = torch.cat([((vae.decode(vae.encode(x[i:i + 256] * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
                          for i in range(0, n, 256)])
    return x, recs, labs


# ----------------------------------------------------------------------------- stage: detector
def stage_detector(args, ck: Path):
    torch.manual_seed(args.seed + 2)
    g = torch.Generator().manual_seed(args.seed + 2)
    data = torch.load(ck / "data.pt")
    imgs, recs, packed = data["images"], data["recons"], data["labels"]
    nimg = imgs.shape[0]
    y = torch.stack([label_vector(unpack_label(packed, i)) for i in range(nimg)])
    net, base_lr = nets.DetectorNet(), 2e-3
    if (ck / "detector" / "model.safetensors").exists():  # continue a finished stage (--force): new cosine cycle
        from safetensors.torch import load_file

        net.load_state_dict(load_file(ck / "detector" / "model.safetensors"))
        base_lr = 1e-3
        g.manual_seed(args.seed + 102)  # fresh sample order for the continued cycle
        log("detector: continuing from the existing checkpoint")
    opt = torch.optim.AdamW(net.parameters(), lr=base_lr, weight_decay=1e-4)
    timer = Timer(args.det_minutes)
    step = 0
    bar = tqdm(desc="detector", unit="step")
    net.train()
    while not timer.done() and (args.max_steps is None or step < args.max_steps):
        cosine_lr(opt, base_lr, timer.frac())
        idx, x = judge_batch(imgs, recs, args.judge_batch, g)
        loss = F.binary_cross_entropy_with_logits(net(x), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    net.eval()
    from safetensors.torch import save_file

    (ck / "detector").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, ck / "detector" / "model.safetensors")
    (ck / "detector" / "config.json").write_text(json.dumps({"labels": nets.DETECTOR_LABELS}, indent=1))
    log(f"detector: {step} steps in {time.time() - timer.t0:.0f}s")
    return {"steps": step, "seconds": time.time() - timer.t0}


# ----------------------------------------------------------------------------- stage: clip
def caption_match(labs, specs) -> torch.Tensor:
    """M[i, j] = caption j is a correct description of image i."""
    n, m = len(labs), len(specs)
    M = torch.ones(n, m, dtype=torch.bool)
    for j, s in enumerate(specs):
        for i, lb in enumerate(labs):
            ok = (s.object is None or s.object == lb["object"]) and (s.colour is None or s.colour == lb["colour"]) \
                and (s.bg is None or s.bg == lb["bg"]) and ((s.style or "plain") == lb["style"]) \
                and (bool(s.gore) == bool(lb["gore"]))
            M[i, j] = ok
    return M


def multi_positive_loss(logits, M):
    m = M.float()
    li = -(torch.logsumexp(logits.masked_fill(~M, -1e4), 1) - torch.logsumexp(logits, 1)).mean()
    lt = -(torch.logsumexp(logits.t().masked_fill(~M.t(), -1e4), 1) - torch.logsumexp(logits.t(), 1)).mean()
    del m
    return (li + lt) / 2


def stage_clip(args, ck: Path, tokenizer):
    torch.manual_seed(args.seed + 3)
    g = torch.Generator().manual_seed(args.seed + 3)
    rng = random.Random(args.seed + 3)
    data = torch.load(ck / "data.pt")
    imgs, recs, packed = data["images"], data["recons"], data["labels"]
    net, base_lr = nets.ClipNet(len(tokenizer)), 1e-3
    if (ck / "clip" / "model.safetensors").exists():  # continue a finished stage (--force): new cosine cycle
        from safetensors.torch import load_file

        net.load_state_dict(load_file(ck / "clip" / "model.safetensors"))
        base_lr = 5e-4
        g.manual_seed(args.seed + 103)  # fresh sample order for the continued cycle
        rng.seed(args.seed + 103)
        log("clip: continuing from the existing checkpoint")
    opt = torch.optim.AdamW(net.parameters(), lr=base_lr, weight_decay=1e-4)
    timer = Timer(args.clip_minutes)
    step = 0
    bar = tqdm(desc="clip", unit="step")
    net.train()
    while not timer.done() and (args.max_steps is None or step < args.max_steps):
        cosine_lr(opt, base_lr, timer.frac())
        idx, x = judge_batch(imgs, recs, args.judge_batch, g)
        labs = [unpack_label(packed, int(i)) for i in idx]
        caps, specs = zip(*(sample_caption(lb, rng, return_spec=True) for lb in labs), strict=False)
        tok = tokenizer(list(caps), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
        zi = net.encode_image(x)
        zt = net.encode_text(tok.input_ids)
        logits = net.logit_scale.exp().clamp(max=100) * zi @ zt.t()
        loss = multi_positive_loss(logits, caption_match(labs, specs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", scale=f"{net.logit_scale.exp().item():.1f}")
    bar.close()
    net.eval()
    from safetensors.torch import save_file

    (ck / "clip").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, ck / "clip" / "model.safetensors")
    log(f"clip: {step} steps in {time.time() - timer.t0:.0f}s")
    return {"steps": step, "seconds": time.time() - timer.t0}


# ----------------------------------------------------------------------------- stage: unet
def min_snr_weights(sched, t, gamma=5.0):
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


def stage_unet(args, ck: Path, tokenizer):
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file

    torch.manual_seed(args.seed + 4)
    g = torch.Generator().manual_seed(args.seed + 4)
    rng = random.Random(args.seed + 4)
    data = torch.load(ck / "data.pt")
    lat, packed = data["latents"], data["labels"]
    n = lat.shape[0]
    unet = nets.make_unet()
    te = nets.make_text_encoder(len(tokenizer))
    state_path = ck / "unet_state.pt"
    step, elapsed, ema_start = 0, 0.0, 0
    prior = {"steps": 0, "minutes": 0.0}  # training done before this cycle (when continuing an export)
    fresh = not state_path.exists()  # else a checkpoint of this cycle, loaded below once the optimizer exists
    if fresh and args.init_from is not None:
        prior = init_unet_from_export(args.init_from, unet, te)
        log(f"unet: continuing the exported model in {args.init_from} "
            f"({prior['steps']} steps, {prior['minutes']:.0f} min before this cycle)")
    elif fresh and (ck / "clip" / "model.safetensors").exists():
        # a fresh start: the text encoder begins as clip-mini's contrastively trained text tower
        clip_sd = load_file(ck / "clip" / "model.safetensors")
        te.load_state_dict({k[len("text_tower."):]: v for k, v in clip_sd.items() if k.startswith("text_tower.")})
        log("unet: text encoder initialised from clip-mini text tower")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="epsilon")
    opt = torch.optim.AdamW([{"params": unet.parameters(), "lr_mult": 1.0},
                             {"params": te.parameters(), "lr_mult": 0.5}], lr=args.lr, weight_decay=1e-2)
    ema_u, ema_t = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
    if not fresh:
        st = torch.load(state_path, weights_only=True)
        unet.load_state_dict(st["unet"])
        te.load_state_dict(st["te"])
        ema_u.load_state_dict(st["ema_unet"])
        ema_t.load_state_dict(st["ema_te"])
        opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st["elapsed"]
        g.set_state(st["g"])
        rng.setstate(st["rng"])
        ema_start = st.get("ema_start", 0)
        prior = st.get("prior", prior)
        log(f"unet: resumed at step {step} ({elapsed / 60:.1f} min)")
        if args.reset_ema:
            ema_u.load_state_dict(unet.state_dict())
            ema_t.load_state_dict(te.state_dict())
            ema_start = step
            log("unet: EMA reset to the current weights")
    budget = args.minutes * 60
    t_start = time.time() - elapsed
    last_ck = time.time()

    def save_state():
        torch.save({"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_u.state_dict(),
                    "ema_te": ema_t.state_dict(), "opt": opt.state_dict(), "step": step,
                    "elapsed": time.time() - t_start, "g": g.get_state(), "rng": rng.getstate(),
                    "ema_start": ema_start, "prior": prior},
                   str(state_path) + ".tmp")
        Path(str(state_path) + ".tmp").replace(state_path)

    bar = tqdm(desc="unet", unit="step", initial=step)
    unet.train()
    te.train()
    loss_avg = None
    while time.time() - t_start < budget and (args.max_steps is None or step < args.max_steps):
        frac = (time.time() - t_start) / budget
        lr = args.lr * min(1.0, (step + 1) / 200)
        if frac > 0.8:  # short linear decay at the end
            lr *= max(0.2, 1 - (frac - 0.8) / 0.2 * 0.8)
        for gp in opt.param_groups:
            gp["lr"] = lr * gp["lr_mult"]
        idx = torch.randint(0, n, (args.batch,), generator=g)
        z0 = lat[idx].float()
        caps = [sample_caption(unpack_label(packed, int(i)), rng) for i in idx]
        caps = ["" if rng.random() < args.cfg_dropout else c for c in caps]
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        zt = sched.add_noise(z0, noise, t)
        cond = te(ids)[0]
        pred = unet(zt, t, cond).sample
        w = min_snr_weights(sched, t)
        loss = ((pred - noise).pow(2).mean((1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        step += 1
        d = min(args.ema, (1 + step - ema_start) / (10 + step - ema_start))
        with torch.no_grad():
            for m, e in ((unet, ema_u), (te, ema_t)):
                for p, pe in zip(m.parameters(), e.parameters(), strict=False):
                    pe.lerp_(p, 1 - d)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.1e}", min=f"{(time.time() - t_start) / 60:.1f}")
        if time.time() - last_ck > args.ckpt_every * 60:
            save_state()
            last_ck = time.time()
            log(f"unet: checkpoint at step {step}, loss {loss_avg:.4f}")
    bar.close()
    save_state()
    log(f"unet: {step} steps, {(time.time() - t_start) / 60:.1f} min")
    return {"steps": step, "minutes": (time.time() - t_start) / 60, "final_loss": loss_avg}


def init_unet_from_export(folder: Path, unet, te) -> dict:
    """Load an exported sd-mini's UNet and text encoder (fp16 on disk) into the fp32 training modules; return the
    training it already had. Every key must match: a silently half-loaded model would train from noise."""
    from safetensors.torch import load_file

    pipe = folder / "pipeline"
    for module, sub, fname in ((unet, "unet", "diffusion_pytorch_model.safetensors"),
                               (te, "text_encoder", "model.safetensors")):
        sd = {k: v.float() for k, v in load_file(pipe / sub / fname).items()}
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise SystemExit(f"--init-from {folder}: {sub} does not match sd-mini's architecture "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    info = json.loads((folder / "train_info.json").read_text())
    steps, minutes = int(info["unet_steps"]), float(info["unet_minutes"])
    return {"steps": steps, "minutes": minutes,
            "cycles": info.get("unet_cycles") or [{"steps": steps, "minutes": minutes}]}


def seed_checkpoint_from_export(folder: Path, ck: Path, logd: dict) -> dict:
    """Make ``ck`` hold the finished vae / detector / clip stages of an exported sd-mini, so that a new UNet cycle
    (``--init-from``) trains against exactly the shipped autoencoder and judges."""
    import shutil

    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    info = json.loads((folder / "train_info.json").read_text())
    if "vae" not in logd:
        AutoencoderKL.from_pretrained(folder / "pipeline" / "vae", torch_dtype=torch.float32).save_pretrained(ck / "vae")
        logd["vae"] = {**info["vae"], "from": "export"}
    for name in ("detector", "clip"):
        if name in logd:
            continue
        (ck / name).mkdir(parents=True, exist_ok=True)
        sd = load_file(folder / name / "model.safetensors")
        save_file({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}, ck / name / "model.safetensors")
        if name == "detector":
            shutil.copyfile(folder / name / "config.json", ck / name / "config.json")
        logd[name] = {**info[name], "from": "export"}
    return logd


# ----------------------------------------------------------------------------- stage: export
def stage_export(args, ck: Path, tokenizer, out: Path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    st = torch.load(ck / "unet_state.pt", weights_only=True)
    unet, te = nets.make_unet(), nets.make_text_encoder(len(tokenizer))
    unet.load_state_dict(st["ema_unet"])
    te.load_state_dict(st["ema_te"])
    pipe = StableDiffusionPipeline(vae=load_vae(ck), text_encoder=te.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=nets.make_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if args.fp16:  # UNet and VAE in fp16 (diffusers upcasts to the requested dtype on load); the text encoder
        # stays fp32 because transformers loads weights in their stored dtype, which would mismatch the UNet
        pipe.unet.to(torch.float16)
        pipe.vae.to(torch.float16)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    for name in ("detector", "clip"):
        sd = load_file(ck / name / "model.safetensors")
        if args.fp16:
            sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
        (out / name).mkdir(exist_ok=True)
        save_file(sd, out / name / "model.safetensors")
    (out / "detector" / "config.json").write_text((ck / "detector" / "config.json").read_text())
    tokenizer.save_pretrained(out / "clip" / "tokenizer")
    (out / "clip" / "config.json").write_text(json.dumps({"vocab_size": len(tokenizer), "embed_dim": 128}, indent=1))
    prior = st.get("prior", {"steps": 0, "minutes": 0.0})
    info = {"unet_steps": prior["steps"] + st["step"], "unet_minutes": prior["minutes"] + st["elapsed"] / 60}
    if prior["steps"]:  # every cycle so far, also across repeated --init-from continuations
        earlier = prior.get("cycles") or [{"steps": prior["steps"], "minutes": prior["minutes"]}]
        info["unet_cycles"] = [*earlier, {"steps": st["step"], "minutes": st["elapsed"] / 60}]
    stages = {k: v for k, v in json.loads((ck / "log.json").read_text()).items() if k != "export"}
    (out / "train_info.json").write_text(json.dumps({**info, **stages}, indent=1))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"export: wrote {out} ({total / 1e6:.2f} MB)")
    return info


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    ap.add_argument("--ckpt", type=Path, default=Path.home() / ".cache" / "unlearn-arena" / "mini_ckpt",
                    help="checkpoints and intermediate data (kept out of the repository)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--minutes", type=float, default=85.0, help="UNet training budget (wall clock)")
    ap.add_argument("--vae-minutes", type=float, default=14.0)
    ap.add_argument("--det-minutes", type=float, default=11.0)
    ap.add_argument("--clip-minutes", type=float, default=10.0)
    ap.add_argument("--n-latents", type=int, default=32_000)
    ap.add_argument("--n-judge", type=int, default=12_000, help="renders (+reconstructions) for detector/clip")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--judge-batch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--reset-ema", action="store_true", help="on resume, restart the EMA from the current weights")
    ap.add_argument("--cfg-dropout", type=float, default=0.1)
    ap.add_argument("--ckpt-every", type=float, default=4.0, help="minutes between UNet checkpoints")
    ap.add_argument("--max-steps", type=int, default=None, help="cap every stage's steps (smoke tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-fp16", dest="fp16", action="store_false")
    ap.add_argument("--force", action="store_true", help="rerun stages even if finished")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="continue an exported sd-mini (e.g. the shipped weights folder): its VAE, detector and clip "
                         "are kept, the UNet stage starts a new cycle from its UNet and text encoder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ck = args.ckpt
    ck.mkdir(parents=True, exist_ok=True)
    logp = ck / "log.json"
    logd = json.loads(logp.read_text()) if logp.exists() else {}
    if args.init_from is not None:
        logd = seed_checkpoint_from_export(args.init_from, ck, logd)
        logp.write_text(json.dumps(logd, indent=1))
    tokenizer = nets.build_tokenizer()
    stages = [s for s in args.stages.split(",") if s]
    t_all = time.time()
    for s in STAGES:
        if s not in stages:
            continue
        if s in logd and s not in ("unet", "export") and not args.force:
            log(f"{s}: already done, skipping")
            continue
        log(f"=== stage {s}")
        if s == "vae":
            r = stage_vae(args, ck)
        elif s == "data":
            r = stage_data(args, ck)
        elif s == "detector":
            r = stage_detector(args, ck)
        elif s == "clip":
            r = stage_clip(args, ck, tokenizer)
        elif s == "unet":
            r = stage_unet(args, ck, tokenizer)
        else:
            r = stage_export(args, ck, tokenizer, args.out)
        logd = json.loads(logp.read_text()) if logp.exists() else {}  # another process may have written it
        logd[s] = r
        logp.write_text(json.dumps(logd, indent=1))
        with open(ck / "history.jsonl", "a") as fh:  # every run of every stage (continued stages appear twice)
            fh.write(json.dumps({"stage": s, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **r}) + "\n")
    log(f"total {(time.time() - t_all) / 60:.1f} min")


if __name__ == "__main__":
    main()
