"""Every paper suite end to end on a full-size SD-1.4-shaped pipeline, then held to its published numbers.

For each ``benchmark/suites/paper-*.yaml`` (or those named with ``--suite``) this runs the user's own path,

    python -m benchmark run --suite SUITE --model sd14-shaped --max-prompts 2 --max-benign 1 --steps 2 \\
        --data-dir DATA --option judge:clip-score.model=CLIP  + the smallest budgets (sd_scale_smoke.BUDGETS)

then ``compare RUN --published SUITE`` twice: as is (it must refuse: the run's protocol differs from the
paper's, at least in its model) and with ``--allow-protocol-mismatch`` (the table, every cell marked). It
records, per suite, the command, exit code, wall time, per-stage seconds and peak memory (the run's
``stage_usage``), the (defense, attack) cells that finished or failed, the run's notes, and both comparisons'
exit codes and output, as JSON (default ``benchmarks/results/paper-suites-<model>-<date>.json``, machine paths
replaced by their roles), and prints a Markdown summary. It exits 1 when a run fails, a planned cell has no
records, or the plain comparison does not refuse a run whose protocol differs.

What it proves: each suite's protocol (prompt set, seeds, guidance, resolution, judge preset, attack options)
runs through prepare, attack, generate and judge at SD-1.x's size, and ``compare --published`` reads the
result. What it does not: any ASR (random weights: images are noise; the suites' own published-protocol
reproductions need SD-1.4's weights, a GPU and, for UnlearnDiffAtk, their NudeNet ``best.onnx``).

    python benchmarks/paper_suites_smoke.py --data-dir ../shared/data                  # all six, hours on 2 CPUs
    python benchmarks/paper_suites_smoke.py --data-dir D --suite paper-ringabell-nudity-k16 --size 256
    python benchmarks/paper_suites_smoke.py --data-dir D --device cuda                 # minutes on a GPU
    python benchmarks/paper_suites_smoke.py --from-run runs/store/paper-...-<hash>     # record a run made by hand

A suite whose judge needs a NudeNet checkpoint the wheel does not ship (UnlearnDiffAtk's ``v3-best``) is
judged with the wheel's ``320n`` unless ``--nudenet-model FILE`` supplies it; the JSON says which, and
``compare`` never calls such a run a reproduction. The prompt files come from ``--data-dir`` (``python -m
benchmark list prompt-sets`` says which files each set needs and where users get them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))

from sd_scale_smoke import BUDGETS, write_results  # noqa: E402  (one table of smallest budgets for both scripts)

WHEEL_CHECKPOINT = "wheel-320n"


@dataclass
class Comparison:
    """One ``compare RUN --published SUITE`` call."""

    command: list[str]
    exit_code: int
    output: str


@dataclass
class SuiteResult:
    suite: str
    command: list[str]
    exit_code: int | None  # None: recorded from an existing run (--from-run), not run here
    wall_seconds: float | None
    run_dir: str | None
    judge_checkpoint: str
    stage_usage: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, dict[str, int]] = field(default_factory=dict)  # defense -> attack -> images judged
    missing: list[str] = field(default_factory=list)  # planned "defense x attack" pairs with no records
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    published: bool = False  # the suite has published entries (reports/leaderboard/published/<suite>/)
    strict: Comparison | None = None  # compare --published as is (must refuse: the protocol differs)
    allowed: Comparison | None = None  # compare --published --allow-protocol-mismatch
    verdicts: dict[str, int] = field(default_factory=dict)  # the allowed comparison's closing counts
    run_config: dict[str, Any] = field(default_factory=dict)  # what the run used: model, prompts, sampler, dtype
    log_tail: str = ""

    def problems(self) -> list[str]:
        found = [f"{self.suite}: run exited {self.exit_code}"] if self.exit_code not in (0, None) else []
        found += [f"{self.suite}: no run directory"] if self.run_dir is None else []
        found += [f"{self.suite}: {pair}: no records" for pair in self.missing]
        found += [f"{self.suite}: {f['defense']} x {f['attack']}: {f['error'][:200]}" for f in self.failures]
        if self.strict is None or self.allowed is None:
            return found
        if not self.published:  # both calls must say so, with the suites that have numbers
            found += [f"{self.suite}: compare --published {c.command[-1]}: exit {c.exit_code}, not 'no published "
                      "entries'" for c in (self.strict, self.allowed)
                      if c.exit_code != 2 or "no published entries" not in c.output]
            return found
        if self.strict.exit_code != 2 or "protocol differs" not in self.strict.output:
            found.append(f"{self.suite}: compare --published did not refuse a run under another protocol "
                         f"(exit {self.strict.exit_code})")
        if self.allowed.exit_code not in (0, 1) or not self.verdicts:
            found.append(f"{self.suite}: compare --published --allow-protocol-mismatch printed no table "
                         f"(exit {self.allowed.exit_code})")
        return found


def paper_suites() -> list[str]:
    from benchmark.api.registry import SUITES

    return [name for name in SUITES.names() if name.startswith("paper-")]


def suite_config(suite: str) -> dict[str, Any]:
    from benchmark.api.registry import SUITES
    from benchmark.suites import read_suite

    return read_suite(Path(SUITES.get(suite)))  # with its include: resolved


def judge_checkpoint(config: dict[str, Any]) -> str:
    return ((config.get("judge_options") or {}).get("nudenet") or {}).get("checkpoint") or WHEEL_CHECKPOINT


def budget_flags(config: dict[str, Any]) -> list[str]:
    """The smallest budget of each of the suite's defenses and attacks, as ``--option`` flags (they override
    the suite's own attack options, e.g. UnlearnDiff's 40 iterations; the run records them)."""
    flags: list[str] = []
    for kind, key in (("defense", "defenses"), ("attack", "attacks")):
        for name in config.get(key) or []:
            for option, value in BUDGETS.get((kind, name), {}).items():
                flags += ["--option", f"{kind}:{name}.{option}={value}"]
    return flags


def run_command(suite: str, config: dict[str, Any], args: argparse.Namespace) -> tuple[list[str], str]:
    command = [sys.executable, "-m", "benchmark", "run", "--suite", suite, "--model", args.model,
               "--max-prompts", str(args.prompts), "--max-benign", str(args.benign), "--steps", str(args.steps),
               "--device", args.device, "--dtype", args.dtype, "--data-dir", str(args.data_dir),
               "--out", str(args.out / "store"), "--option", f"judge:clip-score.model={args.clip}"]
    if args.size is not None:
        command += ["--height", str(args.size), "--width", str(args.size)]
    checkpoint = judge_checkpoint(config)
    if checkpoint != WHEEL_CHECKPOINT:
        if args.nudenet_model is not None:
            command += ["--option", f"judge:nudenet.model_path={args.nudenet_model}"]
        else:  # the paper's checkpoint is a user file; judge with the wheel's and say so (never a reproduction)
            command += ["--option", f"judge:nudenet.checkpoint={WHEEL_CHECKPOINT}"]
            checkpoint = WHEEL_CHECKPOINT
    return command + budget_flags(config), checkpoint


def compare(run_dir: Path, suite: str, allow: bool) -> Comparison:
    command = [sys.executable, "-m", "benchmark", "compare", str(run_dir), "--published", suite]
    command += ["--allow-protocol-mismatch"] if allow else []
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return Comparison(command[1:], done.returncode, (done.stdout + done.stderr).strip()[-6000:])


def record(result: SuiteResult, config: dict[str, Any]) -> SuiteResult:
    """Fill ``result`` from its run directory: usage, cells, failures, notes, and both comparisons."""
    import pandas as pd

    run_dir = Path(result.run_dir) if result.run_dir else None
    if run_dir is None or not (run_dir / "provenance.json").is_file():
        result.run_dir = None
        return result
    provenance = json.loads((run_dir / "provenance.json").read_text())
    result.stage_usage = provenance.get("stage_usage", {})
    if (run_dir / "config.yaml").is_file():
        used = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        result.run_config = {key: used.get(key) for key in ("model", "max_prompts", "max_benign", "sampler")}
        result.run_config |= {"device": provenance.get("device"), "dtype": provenance.get("dtype")}
    if (run_dir / "records.parquet").is_file():
        columns = ["defense", "attack", "role", "prompt_id", "image_index"]
        images = pd.read_parquet(run_dir / "records.parquet", columns=columns).drop_duplicates()  # one per judge
        for (defense, attack), n in images.groupby(["defense", "attack"]).size().items():
            result.cells.setdefault(defense, {})[attack] = int(n)
    if (run_dir / "failures.json").is_file():
        result.failures = json.loads((run_dir / "failures.json").read_text())
    board = run_dir / "leaderboard.md"
    if board.is_file():
        result.notes = [line.removeprefix("Note: ") for line in board.read_text().splitlines()
                        if line.startswith("Note: ")]
    skipped = {tuple(note.removeprefix("attack ").split(":")[0].split(" skipped against "))
               for note in result.notes if note.startswith("attack ") and " skipped against " in note}
    result.missing = [f"{d} x {a}" for d in config.get("defenses") or [] for a in config.get("attacks") or []
                      if a not in result.cells.get(d, {}) and (a, d) not in skipped]
    result.published = has_published(result.suite)
    result.strict = compare(run_dir, result.suite, allow=False)
    result.allowed = compare(run_dir, result.suite, allow=True)
    result.verdicts = verdict_counts(result.allowed.output)
    return result


def has_published(suite: str) -> bool:
    from reports.published import PUBLISHED_ROOT

    return any((PUBLISHED_ROOT / suite).rglob("*.json"))


def verdict_counts(output: str) -> dict[str, int]:
    """The closing line of ``compare --published`` ('0 reproduced, 1 differs, ...') as {verdict: count}."""
    for line in reversed(output.splitlines()):
        if re.match(r"\d+ reproduced, ", line):  # a verdict may hold a comma ('within interval, not reproduced')
            return {verdict: int(count) for count, verdict in re.findall(r"(\d+) (.+?)(?=, \d+ |$)", line)}
    return {}


def run_suite(suite: str, args: argparse.Namespace) -> SuiteResult:
    config = suite_config(suite)
    command, checkpoint = run_command(suite, config, args)
    log_path = args.out / "logs" / f"{suite}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"== {suite}: {len(config.get('defenses') or [])} defense(s) x {len(config.get('attacks') or [])} "
          f"attack(s); progress: tail -f {log_path}", flush=True)
    start = time.perf_counter()
    with log_path.open("w") as log:  # progress bars and log lines; stdout ends with the run directory
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    run_dir = lines[-1] if lines and Path(lines[-1]).is_dir() else None
    result = SuiteResult(suite, command[1:], done.returncode, round(wall, 1), run_dir, checkpoint,
                         log_tail=log_path.read_text()[-3000:])
    record(result, config)
    print(f"   exit {done.returncode} in {wall:.0f} s", flush=True)
    return result


def from_run(run_dir: Path) -> SuiteResult:
    """A run made by hand, recorded as it is: its suite and command are read from its provenance."""
    provenance_file = run_dir / "provenance.json"
    if not provenance_file.is_file():
        raise SystemExit(f"error: {run_dir} is not a run directory (no provenance.json); pass the folder "
                         "that `benchmark run` printed last")
    command = json.loads(provenance_file.read_text()).get("command") or []
    if "--suite" not in command:
        raise SystemExit(f"error: {run_dir} was not run with --suite; this script records paper suites only")
    suite = command[command.index("--suite") + 1]
    config = suite_config(suite)
    checkpoint = next((arg.split("=", 1)[1] for arg in command if arg.startswith("judge:nudenet.checkpoint=")),
                      judge_checkpoint(config))
    result = SuiteResult(suite, ["-m", "benchmark", *command[1:]], None, None, str(run_dir), checkpoint)
    return record(result, config)


def command_places(command: list[str]) -> dict[str, str]:
    """This machine's paths in a run command (data folder, store, CLIP folder, NudeNet file) -> their roles."""
    places: dict[str, str] = {}
    for flag, role in (("--data-dir", "<data>"), ("--out", "<store>")):
        if flag in command[:-1]:
            value = command[command.index(flag) + 1]
            places |= {value: role, str(Path(value).resolve()): role}
    for arg in command:
        for prefix, role in (("judge:clip-score.model=", "<clip>"), ("judge:nudenet.model_path=", "<nudenet>")):
            if arg.startswith(prefix) and arg != prefix + "tiny-random":
                value = arg.removeprefix(prefix)
                places |= {value: role, str(Path(value).resolve()): role}
    return places


def markdown(results: list[SuiteResult]) -> str:
    lines = ["| suite | exit | wall s | cells with images | missing | failed | judged with | compare (strict / "
             "allowed) | peak RSS GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        n_cells = sum(len(row) for row in r.cells.values())
        peaks = [u.get("peak_rss_mib") for u in r.stage_usage.values() if u.get("peak_rss_mib") is not None]
        strict = r.strict.exit_code if r.strict else "-"
        allowed = r.allowed.exit_code if r.allowed else "-"
        peak = f"{max(peaks) / 1024:.1f}" if peaks else "-"
        lines.append(f"| {r.suite} | {'-' if r.exit_code is None else r.exit_code} | "
                     f"{'-' if r.wall_seconds is None else f'{r.wall_seconds:.0f}'} | {n_cells} | {len(r.missing)} | "
                     f"{len(r.failures)} | {r.judge_checkpoint} | {strict} / {allowed} | {peak} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=None, help="only these paper suites (comma-separated; default: all)")
    parser.add_argument("--from-run", type=Path, action="append", default=[], metavar="RUN_DIR",
                        help="record an existing run of a paper suite instead of running (repeatable)")
    parser.add_argument("--data-dir", type=Path, default=None, help="the third-party prompt files (required "
                        "unless --from-run)")
    parser.add_argument("--model", default="sd14-shaped", help="registered model (default: sd14-shaped)")
    parser.add_argument("--prompts", type=int, default=2, help="attack prompts per cell (default 2)")
    parser.add_argument("--benign", type=int, default=1, help="benign prompts per defense (default 1)")
    parser.add_argument("--steps", type=int, default=2, help="sampler steps (default 2)")
    parser.add_argument("--size", type=int, default=None,
                        help="image height and width (default: the suite's own, 512 for every paper suite)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--clip", default=None, help="a local ViT-L/14-shaped CLIP folder (default: a random one "
                        "written into --out); 'tiny-random' for plumbing tests")
    parser.add_argument("--nudenet-model", type=Path, default=None,
                        help="the NudeNet file a suite's judge names (e.g. UnlearnDiffAtk's best.onnx)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "paper-suites",
                        help="work folder: the cell store, logs and run directories (reused on rerun)")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON to write (default: benchmarks/results/paper-suites-<model>-<date>.json)")
    args = parser.parse_args(argv)
    for name in ("prompts", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.benign < 0:
        parser.error("--benign must be at least 0")
    if not args.from_run and (args.data_dir is None or not args.data_dir.is_dir()):
        parser.error("--data-dir must name the folder of third-party prompt files (`python -m benchmark list "
                     "prompt-sets` says which files and where to get them); or record a run with --from-run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    known = paper_suites()
    suites = known if args.suite is None else args.suite.split(",")
    unknown = [s for s in suites if s not in known]
    if unknown:
        print(f"error: not a paper suite: {', '.join(unknown)}; the paper suites are {', '.join(known)}",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.from_run:
        results = [from_run(run_dir) for run_dir in args.from_run]
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.clip is None:
            from random_clip import write_random_clip

            folder = args.out / "clip-vit-l14-random"
            if not (folder / "config.json").is_file():
                print(f"writing a random ViT-L/14-shaped CLIP to {folder} (~1.7 GB)", flush=True)
                write_random_clip(folder)
            args.clip = str(folder)
        results = [run_suite(suite, args) for suite in suites]
    problems = [p for r in results for p in r.problems()]

    import torch

    from benchmark.harness.provenance import collect as collect_provenance  # versions, git commit, platform

    report = {
        "what": "paper_suites_smoke: each paper suite end to end on a full-size SD-1.4-shaped pipeline with RANDOM "
                "weights, then compare --published (the path, cost and memory; no ASR means anything)",
        "settings": "recorded from existing runs (--from-run): see each suite's run_config" if args.from_run else {
            "model": args.model, "device": args.device, "dtype": args.dtype, "attack_prompts": args.prompts,
            "benign_prompts": args.benign, "steps": args.steps, "resolution": args.size or "the suite's"},
        "date": dt.date.today().isoformat(), "wall_seconds": round(time.perf_counter() - started, 1),
        "environment": collect_provenance(torch.device(args.device), {}),
        "suites": [asdict(r) for r in results], "problems": problems,
    }
    path = args.results or REPO / "benchmarks" / "results" / f"paper-suites-{args.model}-{report['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    places = {str(REPO): "<repo>", sys.executable: "python", str(args.out.resolve()): "<out>", str(args.out): "<out>"}
    places |= {str(path): "<results>", str(path.resolve()): "<results>"}  # this script's argv, in the provenance
    for result in results:
        places |= command_places(result.command)
    return write_results(path, report, places, markdown(results), problems)


if __name__ == "__main__":
    sys.exit(main())
