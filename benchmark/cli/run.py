"""``run``: every (task, defense, attack, prompt, seed) cell of a config; cached cells are reused."""

from __future__ import annotations

import argparse
import logging

from benchmark.api.errors import RunFailedError, UserError
from benchmark.cli._common import print_failed, print_summary, quiet_library_progress, report_incomplete
from benchmark.cli.report import print_suite_source
from benchmark.harness.config import RunConfig, config_from_command

log = logging.getLogger("benchmark")

HELP = "run defenses x attacks on a model's tasks and write a leaderboard"
DESCRIPTION = ("Run every (task, defense, attack, prompt, seed) cell; cached cells are reused, so a rerun or a "
               "resumed run only computes what is missing. The run directory is printed as the last line.")
SCALE_HELP = (
    "Under torchrun / accelerate launch each rank computes its share of the cells (on cuda:LOCAL_RANK) and rank "
    "0 merges: no flag needed. --executor submits one job per share through submitit (pip install -e \".[scale]\") "
    "and merges when all are done; the same command again submits only the shares with missing cells. --out must "
    "be a folder every worker sees. Exit 4: some worker did not finish (its finished cells are kept).")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("run", help=HELP, description=DESCRIPTION)
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    scale = parser.add_argument_group("several processes", SCALE_HELP)
    scale.add_argument("--executor", metavar="{local,slurm}",
                       help="local: worker processes on this machine; slurm: a SLURM job array")
    scale.add_argument("--workers", type=int, help="number of workers (shares of the cells) for --executor")
    scale.add_argument("--slurm-partition", help="SLURM partition of the jobs")
    scale.add_argument("--slurm-gpus-per-task", type=int, help="GPUs per SLURM job (default 1; 0 for CPU jobs)")
    scale.add_argument("--slurm-cpus-per-task", type=int, help="CPU cores per SLURM job (default: the cluster's)")
    scale.add_argument("--slurm-time", type=int, help="time limit of each SLURM job, minutes (default 240)")
    parser.set_defaults(handler=handle)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`RunConfig` / sampler key (named as the key, with the short forms kept as aliases)."""
    add = parser.add_argument
    add("--suite", help="a named suite (`list suites`) or a suite file (.yaml/.toml); flags override it")
    add("--model", help="registered model (`list models`) or a local pipeline folder (default: sd-mini)")
    add("--model-revision", help="hub revision (commit) to pin for hub models")
    add("--task", "--tasks", dest="task", action="append",
        help="task(s), comma-separated (default: the model's tasks)")
    add("--defense", "--defenses", dest="defense", action="append",
        help="defense(s), comma-separated, or 'all'; 'none' is always run")
    add("--attack", "--attacks", dest="attack", action="append",
        help="attack(s), comma-separated, or 'all'; 'none' is always run")
    add("--prompts", help="a prompt file (CSV/TSV/JSON/JSONL/TXT) or a registered prompt set's name replacing the "
        "task's attack prompts")
    add("--prompt-column", help="column of --prompts / --benign-prompts holding the prompt (auto: prompt, "
        "adv_prompt, text, caption)")
    add("--benign-prompts", help="a prompt file or a registered prompt set's name replacing the task's benign prompts")
    add("--max-prompts", type=int, help="use the first N attack prompts of each task")
    add("--max-benign", type=int, help="use the first N benign prompts of each task")
    add("--images-per-prompt", type=int, help="images per prompt (seeds: evaluation seed + index)")
    add("--num-inference-steps", "--steps", dest="steps", type=int, help="sampler steps (default: the model's)")
    add("--guidance-scale", "--guidance", dest="guidance", type=float,
        help="guidance scale for prompts whose file sets none (default: the model's)")
    add("--height", type=int, help="image height in pixels (default: the model's)")
    add("--width", type=int, help="image width in pixels (default: the model's)")
    add("--batch-size", type=int, help="images per batch (does not change any image)")
    add("--seed", type=int, help="base seed for prompts without an evaluation seed")
    add("--option", action="append", default=[], metavar="KIND:NAME.KEY=VALUE",
        help="a component option, e.g. defense:negative-prompt.text='nudity, naked' (`list --options NAME`)")
    add("--device", help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    add("--dtype", help="auto (default: fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    add("--data-dir", help="folder holding third-party prompt files (default: $UNLEARN_ARENA_DATA or ./data)")
    add("--name", help="prefix of the run directory's name")
    add("-o", "--out", help="where this command writes: the store root holding cells and run directories "
        "(default: runs/)")
    add("--plugin", "--plugins", dest="plugin", action="append",
        help="a .py file registering your own defenses/attacks/...")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    flags = {"model": args.model, "model_revision": args.model_revision, "tasks": args.task,
             "defenses": args.defense, "attacks": args.attack, "prompts": args.prompts,
             "prompt_column": args.prompt_column, "benign_prompts": args.benign_prompts,
             "max_prompts": args.max_prompts, "max_benign": args.max_benign, "device": args.device,
             "dtype": args.dtype, "data_dir": args.data_dir, "name": args.name, "out": args.out,
             "plugins": args.plugin}
    sampler = {"images_per_prompt": args.images_per_prompt, "num_inference_steps": args.steps,
               "guidance_scale": args.guidance, "height": args.height, "width": args.width,
               "batch_size": args.batch_size, "seed": args.seed}
    return config_from_command(args.suite, flags, sampler, args.option)


def handle(args: argparse.Namespace) -> int:
    from benchmark.harness.resolve import resolve
    from benchmark.harness.runner import RunIncompleteError, execute
    from benchmark.harness.scale import WorkersFailedError
    from benchmark.shard import launch_from_env

    launch = launch_from_env()
    executor = executor_of(args, launch)
    config = config_from_args(args)
    if args.dry_run:
        if args.suite:  # first: a paper suite's protocol is worth reading even where its files are missing
            print_suite_source(args.suite)
        plan = resolve(config)
        print(plan.config.to_yaml())
        for note in plan.notes:
            log.warning("%s", note)
        return 0
    if not args.verbose:
        quiet_library_progress()
    try:
        if executor is not None:
            from benchmark.harness.executors import run_with_executor

            summary = run_with_executor(config, executor)
        elif launch is not None:
            from benchmark.harness.scale import run_launched

            summary = run_launched(config, launch)
            if summary is None:  # not rank 0: its share is done; rank 0 merges and prints the leaderboard
                log.info("worker %d of %d finished its share", launch.rank, launch.world)
                return 0
        else:
            summary = execute(config)
    except RunFailedError as failed:
        return print_failed(failed)
    except (RunIncompleteError, WorkersFailedError) as incomplete:
        return report_incomplete(incomplete)
    return print_summary(summary)


def executor_of(args: argparse.Namespace, launch: object) -> object:
    """The submitit executor's options when ``--executor`` is given (checked before any work), else None."""
    if args.executor is None and args.workers is None:
        return None
    if args.executor is None:
        raise UserError("--workers needs --executor local or slurm (under torchrun the number of processes "
                        "is the number of workers)")
    if launch is not None:
        raise UserError("--executor inside torchrun / accelerate launch: use one or the other")
    from benchmark.harness.executors import check_executor, executor_options  # deferred: imports submitit

    options = executor_options(args)
    check_executor(options)
    return options
