"""Raw diffusers vs. the harness on sd-mini: images per second of a plain ``StableDiffusionPipeline`` loaded
from the shipped folder, and of the harness's sampler (``benchmark.api.sampling.draw`` through the
undefended ``DefendedPipeline``), same prompts, seeds and settings, interleaved in one process so that
machine load affects both alike. Machines differ by up to 2x: read the ratio, and quote the raw figure
next to any wall time of the README's main job.

    python benchmarks/bench_raw_diffusers.py                 # batch 32, DDIM 25, guidance 5, 64 px
    python benchmarks/bench_raw_diffusers.py --batch 16 --repeats 5

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from diffusers import StableDiffusionPipeline

    from benchmark.api.defense import DefendedPipeline
    from benchmark.api.registry import PROMPT_SETS, TASKS
    from benchmark.api.sampling import draw, initial_latents
    from benchmark.mini_world import DEFAULT_SAMPLING, PIPELINE_DIR
    from benchmark.models.sd_mini import SdMiniModel

    settings = dict(DEFAULT_SAMPLING)
    prompts = [p.text for p in PROMPT_SETS.get("mini-object-benign").load(None, limit=args.batch)]
    seeds = list(range(args.batch))
    raw = StableDiffusionPipeline.from_pretrained(PIPELINE_DIR, safety_checker=None, requires_safety_checker=False,
                                                  local_files_only=True)
    raw.set_progress_bar_config(disable=True)
    model = SdMiniModel().load(torch.device("cpu"), torch.float32)
    harness = DefendedPipeline(model, None, TASKS.get("mini-object"))

    def run_raw() -> float:
        latents = initial_latents(seeds, raw, settings["height"], settings["width"])
        began = time.perf_counter()
        raw(prompt=prompts, latents=latents, output_type="pil", **settings)
        return time.perf_counter() - began

    def run_harness() -> float:
        began = time.perf_counter()
        draw(harness, seeds, prompts=prompts, **settings)
        return time.perf_counter() - began

    run_raw(), run_harness()  # warm-up: first calls allocate
    raw_times, harness_times = [], []
    for _ in range(args.repeats):
        raw_times.append(run_raw())
        harness_times.append(run_harness())
    raw_s, harness_s = statistics.median(raw_times), statistics.median(harness_times)
    print(json.dumps({
        "batch": args.batch, "repeats": args.repeats, "settings": settings, "threads": torch.get_num_threads(),
        "raw_images_per_s": round(args.batch / raw_s, 3), "harness_images_per_s": round(args.batch / harness_s, 3),
        "harness_over_raw_time": round(harness_s / raw_s, 3),
        "per_repeat_ratio": [round(h / r, 3) for h, r in zip(harness_times, raw_times, strict=True)],
    }, indent=2))


if __name__ == "__main__":
    main()
