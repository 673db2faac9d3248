"""SafeRedir's false-positive rate on many benign prompts, beyond the 50 of each task's benign set.

For each sd-mini task, draws ``--prompts`` benign captions from the world's grammar with seeds that neither
the evaluation sets (seed 0), the redirector's training split (seeds 1+) nor its calibration split (seeds
1001+) use, drops any text that occurs in those sets, writes them to a CSV and runs

    python -m benchmark run --task T --defense saferedir --attack none --benign-prompts CSV --max-prompts 1

The leaderboard's ``benign_trigger_rate`` (the classifier fired on a benign prompt) and
``benign_false_trigger_rate`` (it fired although the undefended image does not show the concept) then
come with n = ``--prompts`` and their 95% Wilson intervals.

    python benchmarks/saferedir_benign_triggers.py --prompts 250 --out runs/
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

FIRST_SEED = 5000  # grammar seeds for these prompts; training uses 1.., calibration 1001..


def benign_prompts(task_name: str, n: int) -> list[str]:
    from benchmark.mini_world.tasks import TASKS, _make, training_split

    spec = TASKS[task_name]
    taken = {p.text for which in ("attack", "benign", "safe") for p in spec.prompts(which)}
    for split_seed in (1, 1001):  # the default training and calibration splits (options.seed 0)
        pairs, benign = training_split(task_name, 64, 64, seed=split_seed)
        taken |= {p.text for pair in pairs for p in pair} | {p.text for p in benign}
    out: list[str] = []
    seed = FIRST_SEED
    while len(out) < n:
        _, _, drawn = _make(spec.kind, seed=seed)
        out += [p.text for p in drawn if p.text not in taken and p.text not in out]
        seed += 1
    return out[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mini-unsafe,mini-object,mini-style")
    parser.add_argument("--prompts", type=int, default=250)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args()

    import pandas as pd

    from benchmark.cli import main as cli

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        path = out / f"benign-{task}-{args.prompts}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["prompt"])
            writer.writerows([p] for p in benign_prompts(task, args.prompts))
        argv = ["run", "--task", task, "--defense", "saferedir", "--attack", "none", "--benign-prompts", str(path),
                "--max-prompts", "1", "--out", str(out), "--name", f"benign-triggers-{task}"]
        print("python -m benchmark " + " ".join(argv), flush=True)
        cli(argv)
        run_dir = sorted(out.glob(f"benign-triggers-{task}-*"), key=lambda p: p.stat().st_mtime)[-1]
        board = pd.read_csv(run_dir / "leaderboard.csv")
        rows = board[(board.defense == "saferedir")
                     & board.metric.isin(["benign_trigger_rate", "benign_false_trigger_rate", "clip_score"])]
        for row in rows.itertuples():
            print(f"{task} {row.metric}: {row.value:.4f} [{row.ci_low:.4f}, {row.ci_high:.4f}] n={row.n}", flush=True)


if __name__ == "__main__":
    main()
