"""``export``: a run's adversarial prompts as a reusable file (UnlearnDiff CSV layout or a datasets folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli._common import existing_folder
from benchmark.harness.config import split_names

HELP = "write a run's adversarial prompts as a reusable file (UnlearnDiff CSV layout or hf)"
DESCRIPTION = (
    "Write the adversarial prompts of RUN_DIR's (task, defense, attack) cells in the UnlearnDiff CSV layout "
    "(case_number, prompt, evaluation_seed, evaluation_guidance) plus the source prompt, attack, its options "
    "(JSON) and cost, whether it broke the defense (flagged, blocked, judge, threshold) and the source run, model "
    "and defense. Embedding-only results go to FILE.embeds.safetensors beside it (one tensor per case number; the "
    "rows' embeds_file/embeds_key say so). Prompts the attack could not process are kept with attack_status "
    "failed. The attack 'none' is exported only when named.")
EPILOG = ("replay an export on another defense, with the exported seeds and guidance:\n"
          "  python -m benchmark run --task T --defense uce --attack prompt-set \\\n"
          "      --option attack:prompt-set.file=FILE --prompts FILE --prompt-column source_prompt\n"
          "or let `python -m benchmark transfer RUN_DIR` export, replay and tabulate every cell.")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("export", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (the last line `run` prints)")
    parser.add_argument("-o", "--out", "--output", dest="out", type=Path, required=True,
                        help="where this command writes: the file (one cell) or a folder (one "
                        "<task>__<defense>__<attack>.csv per cell)")
    parser.add_argument("--task", action="append", help="only these task(s), comma-separated")
    parser.add_argument("--defense", action="append", help="only the prompts found against these defense(s)")
    parser.add_argument("--attack", action="append", help="only these attack(s)")
    parser.add_argument("--format", choices=["csv", "hf"], default="csv",
                        help="csv (default) or hf: a Hugging Face datasets folder (save_to_disk; needs the 'hub' extra)")
    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    from benchmark.harness.transfer import embeds_locator
    from reports.export import export_run

    run_dir = existing_folder(args.run_dir, "RUN_DIR")
    exported = export_run(run_dir, args.out, tasks=split_names(args.task), defenses=split_names(args.defense),
                          attacks=split_names(args.attack), fmt=args.format, locate=embeds_locator(run_dir))
    for cell in exported:
        print(cell.line())
    return 0
