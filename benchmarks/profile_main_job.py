"""Where the main job's time goes: ``python -m benchmark run`` under instruments, one JSON of wall and CPU
seconds per part (exclusive: a nested part's time is not its parent's), the UNet evaluations each part
made (calls, samples, with or without gradient) and the VAE decodes, plus the run's own ``stage_usage``.

    python benchmarks/profile_main_job.py --out /tmp/p -- --defense saferedir --attack all
    python benchmarks/profile_main_job.py --out /tmp/p --baseline -- --defense saferedir --attack all \\
        --task mini-unsafe --max-prompts 8 --max-benign 8

Everything after ``--`` goes to ``benchmark run`` (``--out`` is set to a fresh folder under the script's
``--out``). ``--baseline`` switches the levers of this commit off (UnlearnDiff draws its targets apart from
check 0 of the undefended model), so one checkout measures before and after. The machine may be shared:
compare the two runs' *counts* (deterministic) and their CPU seconds, and quote wall seconds next to
``python benchmarks/bench_raw_diffusers.py`` run right after (raw-image-equivalents = wall x raw images/s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

PARTS = [  # (module, class or None, function, part name)
    ("attacks.unlearndiff", "UnlearnDiff", "_check_source", "unlearndiff.check0"),
    ("attacks.unlearndiff", "UnlearnDiff", "_check", "unlearndiff.checks"),
    ("attacks.unlearndiff", "UnlearnDiff", "_targets", "unlearndiff.targets"),
    ("attacks.unlearndiff", "UnlearnDiff", "_attack_batch", "unlearndiff.optimisation"),
    ("attacks.ring_a_bell", "RingABell", "run", "ring-a-bell"),
    ("attacks.paraphrase", "Paraphrase", "run", "paraphrase"),
    ("benchmark.harness.sharing", None, "claimed_generate", "generate-stage"),
    ("benchmark.harness.sharing", None, "claimed_judge", "judge-stage"),
    ("benchmark.harness.stages.prepare", None, "prepare_defense", "prepare"),
]


class Clock:
    """Exclusive wall and CPU seconds per part (a stack: entering a part pauses its parent's clock)."""

    def __init__(self):
        self.wall = defaultdict(float)
        self.cpu = defaultdict(float)
        self.stack = ["other"]
        self.mark = (time.perf_counter(), time.process_time())

    def _charge(self):
        now = (time.perf_counter(), time.process_time())
        self.wall[self.stack[-1]] += now[0] - self.mark[0]
        self.cpu[self.stack[-1]] += now[1] - self.mark[1]
        self.mark = now

    def enter(self, part):
        self._charge()
        self.stack.append(part)

    def leave(self):
        self._charge()
        self.stack.pop()

    @property
    def part(self):
        return self.stack[-1]


def instrument(clock: Clock, counts, baseline: bool) -> None:
    import importlib

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    for module_name, cls, fn, part in PARTS:
        module = importlib.import_module(module_name)
        owner = getattr(module, cls) if cls else module
        original = getattr(owner, fn)

        def wrapped(*args, _original=original, _part=part, **kwargs):
            if clock.part == "unlearndiff.check0":  # check 0 through the plain check (the baseline)
                return _original(*args, **kwargs)
            clock.enter(_part)
            try:
                return _original(*args, **kwargs)
            finally:
                clock.leave()

        if cls and isinstance(owner.__dict__.get(fn), staticmethod):
            wrapped = staticmethod(wrapped)
        setattr(owner, fn, wrapped)
        if not cls:  # the runner imported the name itself
            runner = importlib.import_module("benchmark.harness.runner")
            if getattr(runner, fn, None) is original:
                setattr(runner, fn, wrapped)
    if baseline:
        from attacks.unlearndiff import UnlearnDiff

        UnlearnDiff._samples_undefended = staticmethod(lambda ctx: False)

    unet_forward = UNet2DConditionModel.forward

    def counted_unet(self, sample, *args, **kwargs):
        c = counts[clock.part]
        c["unet_calls"] += 1
        c["unet_samples"] += int(sample.shape[0])
        if torch.is_grad_enabled():
            c["unet_samples_with_grad"] += int(sample.shape[0])
        return unet_forward(self, sample, *args, **kwargs)

    UNet2DConditionModel.forward = counted_unet
    vae_decode = AutoencoderKL.decode

    def counted_decode(self, z, *args, **kwargs):
        counts[clock.part]["vae_decoded"] += int(z.shape[0])
        return vae_decode(self, z, *args, **kwargs)

    AutoencoderKL.decode = counted_decode


def main() -> None:
    argv = sys.argv[1:]
    run_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the run's store and the JSON")
    parser.add_argument("--baseline", action="store_true", help="the levers off (before)")
    parser.add_argument("--json", default=None, help="where to write the JSON (default: OUT/profile.json)")
    args = parser.parse_args(own)

    clock = Clock()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    instrument(clock, counts, args.baseline)
    from benchmark.cli import main as cli_main

    store = Path(args.out) / ("baseline" if args.baseline else "levers")
    began = (time.perf_counter(), time.process_time())
    code = cli_main(["run", *run_args, "--out", str(store)])
    clock._charge()
    wall, cpu = time.perf_counter() - began[0], time.process_time() - began[1]
    runs = sorted(p for p in store.iterdir() if (p / "provenance.json").is_file())
    usage = json.loads((runs[-1] / "provenance.json").read_text()).get("stage_usage") if runs else None
    result = {
        "command": "python benchmarks/profile_main_job.py " + " ".join(argv),
        "levers": "off (baseline)" if args.baseline else "on",
        "exit_code": code,
        "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "parts": {part: {"wall_seconds": round(clock.wall[part], 2), "cpu_seconds": round(clock.cpu[part], 2),
                         **dict(counts.get(part, {}))}
                  for part in sorted(set(clock.wall) | set(counts), key=lambda p: -clock.wall[p])},
        "stage_usage": usage,
    }
    target = Path(args.json) if args.json else Path(args.out) / f"profile-{'baseline' if args.baseline else 'levers'}.json"
    target.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
