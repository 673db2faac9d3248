"""UnlearnDiff: per-prompt speed of optimising several prompts in one batch vs one prompt at a time, at the
same iteration budget, measured in one run. Prints the ratio (one-at-a-time seconds per prompt divided by
batched seconds per prompt).

Both arms do identical work per prompt: one target generation, ``--iterations`` optimisation steps and one
final judge check (early stopping and the source check are off, so no prompt leaves a batch early).

    OMP_NUM_THREADS=1 python benchmarks/bench_unlearndiff_batching.py --prompts 8 --iterations 10
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd-mini")
    parser.add_argument("--task", default="mini-unsafe")
    parser.add_argument("--defense", default="negative-prompt")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per arm; also the batch size")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import attacks  # noqa: F401  (registers the attacks)
    import defenses  # noqa: F401
    from attacks._token_search import forget_targets
    from attacks.unlearndiff import UnlearnDiff
    from benchmark.api.attack import AttackContext
    from benchmark.api.model import get_model_spec, resolve_device, resolve_dtype
    from benchmark.api.registry import DEFENSES, JUDGES, PROMPT_SETS, TASKS

    device = resolve_device(args.device)
    spec = get_model_spec(args.model)
    model = spec.load(device, resolve_dtype("auto", device))
    task = TASKS.get(args.task)
    defended = DEFENSES.get(args.defense)().apply(model, task, None)
    judge = JUDGES.get(task.judge.name)(device=device.type, **task.judge.options)
    d = spec.defaults
    sampler = {"num_inference_steps": d.num_inference_steps, "guidance_scale": d.guidance_scale,
               "height": d.height, "width": d.width}
    prompts = PROMPT_SETS.get(task.attack_prompts).load(None, limit=args.prompts)
    ctx = AttackContext(model=model, defended=defended, task=task, judge=judge, sampler=sampler)

    def per_prompt_seconds(batch_size: int) -> float:
        forget_targets(model)  # both arms generate their own targets
        attack = UnlearnDiff(iterations=args.iterations, early_stop=False, check_source=False,
                             batch_size=batch_size)
        start = time.perf_counter()
        outputs = attack.run(prompts, ctx)
        assert all(o.meta["iterations"] == args.iterations for o in outputs)
        return (time.perf_counter() - start) / len(prompts)

    per_prompt_seconds(len(prompts))  # warm-up (allocator, lazy imports), not timed
    batched = per_prompt_seconds(len(prompts))
    single = per_prompt_seconds(1)
    print(f"model {args.model}, task {args.task}, defense {args.defense}, device {device}, "
          f"{len(prompts)} prompts, {args.iterations} iterations, torch threads {torch.get_num_threads()}")
    print(f"one prompt at a time: {single:.2f} s/prompt")
    print(f"batched ({len(prompts)} per batch): {batched:.2f} s/prompt")
    print(f"speed-up per prompt: {single / batched:.2f}x")


if __name__ == "__main__":
    main()
