"""SafeRedir's generation-time overhead: the defended sampler vs. the undefended one, same prompts, same
seeds, measured in one process with interleaved repetitions (so machine load affects both alike).

    python benchmarks/bench_saferedir_overhead.py                      # sd-mini, batch 16, CPU
    python benchmarks/bench_saferedir_overhead.py --model sd14-shaped --device cuda --dtype fp16

Prints one JSON object: median seconds per batch for each, their ratio (defended / undefended), and the
per-repetition ratios. ``sd14-shaped`` is a full-size SD-1.4-shaped pipeline with random weights (cost
only; no hub download). The redirector is the trained one when the task's shipped file matches the model,
else a randomly initialised one of the same size (the cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    from benchmark.api.model import get_model_spec

    if name not in ("sd-mini", "sd14-shaped"):
        raise SystemExit(f"unknown --model {name!r}: sd-mini or sd14-shaped")
    return get_model_spec(name).load(device, dtype)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd-mini")
    ap.add_argument("--task", default="mini-unsafe")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args(argv)

    from benchmark.api.defense import DefendedPipeline
    from benchmark.api.model import DTYPES
    from benchmark.api.registry import TASKS
    from benchmark.harness.stages.generate import initial_latents
    from defenses.saferedir import (
        SHIPPED_DIR,
        SafeRedir,
        SafeRedirPipeline,
        load_redirector,
        read_metadata,
        resolve_behaviour,
    )
    from defenses.saferedir_net import Redirector

    device = torch.device(args.device)
    model = build_model(args.model, device, DTYPES[args.dtype])
    model.pipe.set_progress_bar_config(disable=True)
    task = TASKS.get(args.task)
    defense = SafeRedir()
    shipped = SHIPPED_DIR / f"{args.task}.safetensors"
    if shipped.is_file() and read_metadata(shipped).get("base_model") == model.key:
        net, source = load_redirector(shipped), "trained (shipped)"
    else:
        net, source = Redirector(defense.network_config(model)), "random init (same size)"
    net = net.to(device)
    defended = SafeRedirPipeline(model, defense, task, net, resolve_behaviour(defense.options))
    plain = DefendedPipeline(model, None, task)
    d = model.defaults
    steps = args.steps or d.num_inference_steps
    kwargs = dict(num_inference_steps=steps, guidance_scale=d.guidance_scale, height=d.height, width=d.width)
    prompts = [p.text for p in _prompts(task, args.batch)]
    latents = initial_latents(list(range(args.batch)), model.pipe, d.height, d.width).to(device, model.dtype)

    def timed(pipeline) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        pipeline.generate(prompts, latents, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    timed(plain), timed(defended)  # warm-up
    base, defd = [], []
    for _ in range(args.repeats):
        base.append(timed(plain))
        defd.append(timed(defended))
    ratios = [b2 / b1 for b1, b2 in zip(base, defd, strict=True)]
    result = {
        "model": args.model, "device": str(device), "dtype": args.dtype, "batch": args.batch, "steps": steps,
        "threads": torch.get_num_threads(), "redirector": source,
        "redirector_parameters": sum(p.numel() for p in net.parameters()),
        "undefended_seconds_median": statistics.median(base), "saferedir_seconds_median": statistics.median(defd),
        "overhead_ratio_median": statistics.median(ratios), "overhead_ratios": ratios,
        "redirected_fraction_last_batch": sum(defended.last_redirected) / len(defended.last_redirected),
    }
    print(json.dumps(result, indent=1))
    return result


def _prompts(task, n):
    """Half the task's attack prompts, half benign, so the batch holds both decisions."""
    from benchmark.api.registry import PROMPT_SETS

    try:
        attack = PROMPT_SETS.get(task.attack_prompts).load(None, limit=n)
        benign = PROMPT_SETS.get(task.benign_prompts).load(None, limit=n)
        mixed = attack[: n // 2] + benign[: n - n // 2]
        if len(mixed) == n:
            return mixed
    except Exception:  # noqa: BLE001 - data-dependent prompt sets: fall back to plain prompts
        pass
    from benchmark.api.prompt import Prompt

    return [Prompt(id=str(i), text=f"a photo of a thing number {i}") for i in range(n)]


if __name__ == "__main__":
    main()
