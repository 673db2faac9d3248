"""``python -m benchmark``: run the benchmark, list registered entries, re-render a run's report.

Examples::

    python -m benchmark run --defense saferedir --attack all
    python -m benchmark run --model tiny-random --task toy --defense none,negative-prompt --out /tmp/runs
    python -m benchmark run --suite smoke
    python -m benchmark list defenses
    python -m benchmark report runs/<run-id>
    python -m benchmark compare reports/leaderboard runs/<run-id>

  several processes (one store, same records as one process; see README "Several GPUs or a cluster"):
    torchrun --nproc-per-node 2 -m benchmark run --defense esd-u,uce --attack all
    python -m benchmark run --defense esd-u --executor slurm --workers 32 --slurm-partition gpu
    python -m benchmark run --defense esd-u --executor local --workers 3
    python -m benchmark merge runs/<run-id>
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

import yaml

from benchmark.api.errors import RunFailedError, UserError
from benchmark.api.registry import ALL_REGISTRIES, ATTACKS, DEFENSES, JUDGES, REGISTRIES_BY_KIND, SUITES, load_plugin
from benchmark.harness.config import config_from_mapping, load_suite_file, merge, parse_option, split_names
from benchmark.harness.stages import cost_line

log = logging.getLogger("benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="unlearn-arena: attack concept-unlearning defenses of text-to-image diffusion models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run defenses x attacks on a model's tasks and write a leaderboard",
                         description="Run every (task, defense, attack, prompt, seed) cell; cached cells are "
                         "reused, so a rerun or a resumed run only computes what is missing. The run "
                         "directory is printed as the last line.")
    run.add_argument("--suite", help="a named suite (`list suites`) or a suite file (.yaml/.toml); flags override it")
    run.add_argument("--model", help="registered model (`list models`) or a local pipeline folder "
                     "(default: sd-mini)")
    run.add_argument("--model-revision", help="hub revision (commit) to pin for hub models")
    run.add_argument("--task", action="append", help="task(s), comma-separated (default: the model's tasks)")
    run.add_argument("--defense", action="append", help="defense(s), comma-separated, or 'all'; 'none' is always run")
    run.add_argument("--attack", action="append", help="attack(s), comma-separated, or 'all'; 'none' is always run")
    run.add_argument("--prompts", help="a prompt file (CSV/TSV/JSON/JSONL/TXT) or a registered prompt set's name "
                     "replacing the task's attack prompts")
    run.add_argument("--prompt-column", help="column of --prompts / --benign-prompts holding the prompt "
                     "(auto: prompt, adv_prompt, text, caption)")
    run.add_argument("--benign-prompts", help="a prompt file or a registered prompt set's name replacing the task's "
                     "benign prompts")
    run.add_argument("--max-prompts", type=int, help="use the first N attack prompts of each task")
    run.add_argument("--max-benign", type=int, help="use the first N benign prompts of each task")
    run.add_argument("--images-per-prompt", type=int, help="images per prompt (seeds: evaluation seed + index)")
    run.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    run.add_argument("--guidance", type=float, help="guidance scale for prompts whose file sets none")
    run.add_argument("--height", type=int)
    run.add_argument("--width", type=int)
    run.add_argument("--batch-size", type=int, help="images per batch (does not change any image)")
    run.add_argument("--seed", type=int, help="base seed for prompts without an evaluation seed")
    run.add_argument("--option", action="append", default=[], metavar="KIND:NAME.KEY=VALUE",
                     help="a component option, e.g. defense:negative-prompt.text='nudity, naked'")
    run.add_argument("--device", help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    run.add_argument("--dtype", help="auto (default: fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    run.add_argument("--data-dir", help="folder holding third-party prompt files (default: $UNLEARN_ARENA_DATA or ./data)")
    run.add_argument("--name", help="prefix of the run directory's name")
    run.add_argument("--out", help="store root holding cells and run directories (default: runs/)")
    run.add_argument("--plugin", action="append", help="a .py file registering your own defenses/attacks/...")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    scale = run.add_argument_group(
        "several processes", "Under torchrun / accelerate launch each rank computes its share of the cells "
        "(on cuda:LOCAL_RANK) and rank 0 merges: no flag needed. --executor submits one job per share "
        "through submitit (pip install -e \".[scale]\") and merges when all are done; the same command "
        "again submits only the shares with missing cells. --out must be a folder every worker sees. "
        "Exit 4: some worker did not finish (its finished cells are kept).")
    scale.add_argument("--executor", metavar="{local,slurm}",
                       help="local: worker processes on this machine; slurm: a SLURM job array")
    scale.add_argument("--workers", type=int, help="number of workers (shares of the cells) for --executor")
    scale.add_argument("--slurm-partition", help="SLURM partition of the jobs")
    scale.add_argument("--slurm-gpus-per-task", type=int, help="GPUs per SLURM job (default 1; 0 for CPU jobs)")
    scale.add_argument("--slurm-cpus-per-task", type=int, help="CPU cores per SLURM job (default: the cluster's)")
    scale.add_argument("--slurm-time", type=int, help="time limit of each SLURM job, minutes (default 240)")

    merge = sub.add_parser(
        "merge", help="write the records and leaderboard of a multi-process run whose workers have finished",
        description="Read every cell of RUN_DIR's config (RUN_DIR/config.yaml) from the store (RUN_DIR's parent) "
        "and write records.parquet and the leaderboards exactly as a one-process run writes them. Computes "
        "nothing: exit 4 with the missing cells listed when some worker has not finished (rerun the run's "
        "command to compute them).")
    merge.add_argument("run_dir", type=Path, help="the run directory (its name is printed and logged by `run`)")

    lst = sub.add_parser("list", help="list registered entries with a one-line description")
    lst.add_argument("kind", nargs="?", choices=sorted(REGISTRIES_BY_KIND), help="only this kind")
    lst.add_argument("--plugin", action="append", default=[], help="also load this plugin file")
    lst.add_argument("--options", metavar="NAME",
                     help="print the options of a defense, attack or judge (type, default, allowed values, help); "
                     "KIND:NAME (e.g. judge:nudenet) when a name is registered under two kinds")

    report = sub.add_parser(
        "report", help="leaderboard (Markdown, CSV, LaTeX, HTML), plots and image grids of a run",
        description="Render a run directory (or a folder of reference entries, e.g. reports/leaderboard) into "
        "RUN_DIR/report/: leaderboard.md/.csv/_wide.csv/.tex, report.html (self-contained), plots/ and grids/ "
        "(PNG + PDF). A run's leaderboard.csv/.md are re-rendered too.")
    report.add_argument("run_dir", type=Path, help="a run directory, or a folder of reference entries")
    report.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/report)")
    report.add_argument("--grid-prompts", help="comma-separated prompt ids for the image grids "
                        "(default: the first --grid-count prompts of each task)")
    report.add_argument("--grid-count", type=int, default=2, help="prompts per task in image grids (0: none)")
    report.add_argument("--unblurred", action="store_true",
                        help="do not blur images the nudity judge flagged in the image grids")
    report.add_argument("--no-plots", action="store_true", help="tables and HTML only")
    report.add_argument("--write-entries", type=Path, metavar="DIR",
                        help="also write one reference entry per (model, task, defense, attack) under DIR "
                        "(e.g. reports/leaderboard); existing entries of other keys are kept")

    compare = sub.add_parser(
        "compare", help="compare two runs (or a run with the reference entries); exit 1 on a regression",
        description="Print every ASR and utility difference between BASE and NEW with its 95% interval. "
        "Exit 1 when some defense's ASR got significantly worse (the Newcombe interval of the increase lies "
        "above --asr-margin) or its benign utility dropped by more than --utility-tolerance (relative) and "
        "significantly; exit 0 otherwise. Definitions: reports/compare.py.")
    compare.add_argument("base", type=Path, help="run directory or entries folder (e.g. reports/leaderboard)")
    compare.add_argument("new", type=Path, nargs="?", help="run directory or entries folder (omitted with --published)")
    compare.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    compare.add_argument("--asr-margin", type=float, default=0.0,
                         help="ASR increase (0..1) that is tolerated even when significant (default 0)")
    compare.add_argument("--utility-tolerance", type=float, default=0.02,
                         help="relative utility drop tolerated (default 0.02 = 2%%)")
    compare.add_argument("--against", action="append", default=[], metavar="NEW_DEFENSE=BASE_DEFENSE",
                         help="hold a defense of NEW to another defense of BASE, e.g. my-defense=negative-prompt")
    compare.add_argument("--published", metavar="SUITE",
                         help="hold the run BASE to a paper suite's published numbers (e.g. "
                         "paper-unlearndiff-nudity-sd14): per cell reproduced / differs / not run; "
                         "definitions: reports/published.py")
    compare.add_argument("--allow-protocol-mismatch", action="store_true",
                         help="with --published: compare even when the run's protocol (judge preset, "
                         "prompts, steps, ...) differs from the published one; those cells are marked")
    add_export_parsers(sub)
    return parser


def add_export_parsers(sub) -> None:
    """``export`` (a run's adversarial prompts as files) and ``transfer`` (replayed on other defenses)."""
    export = sub.add_parser(
        "export", help="write a run's adversarial prompts as a reusable file (UnlearnDiff CSV layout or hf)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write the adversarial prompts of RUN_DIR's (task, defense, attack) cells in the UnlearnDiff "
        "CSV layout (case_number, prompt, evaluation_seed, evaluation_guidance) plus the source prompt, attack, "
        "its options (JSON) and cost, whether it broke the defense (flagged, blocked, judge, threshold) and the "
        "source run, model and defense. Embedding-only results go to FILE.embeds.safetensors beside it (one "
        "tensor per case number; the rows' embeds_file/embeds_key say so). Prompts the attack could not "
        "process are kept with attack_status failed. The attack 'none' is exported only when named.",
        epilog="replay an export on another defense, with the exported seeds and guidance:\n"
        "  python -m benchmark run --task T --defense uce --attack prompt-set \\\n"
        "      --option attack:prompt-set.file=FILE --prompts FILE --prompt-column source_prompt\n"
        "or let `python -m benchmark transfer RUN_DIR` export, replay and tabulate every cell.")
    export.add_argument("run_dir", type=Path, help="a run directory (the last line `run` prints)")
    export.add_argument("-o", "--output", type=Path, required=True,
                        help="the file (one cell) or a folder (one <task>__<defense>__<attack>.csv per cell)")
    export.add_argument("--task", action="append", help="only these task(s), comma-separated")
    export.add_argument("--defense", action="append", help="only the prompts found against these defense(s)")
    export.add_argument("--attack", action="append", help="only these attack(s)")
    export.add_argument("--format", choices=["csv", "hf"], default="csv",
                        help="csv (default) or hf: a Hugging Face datasets folder (save_to_disk; needs the "
                        "'hub' extra)")

    transfer = sub.add_parser(
        "transfer", help="transfer matrix: prompts found against one defense, replayed on the others",
        description="Export every (task, defense, attack) cell of SOURCE_RUN, replay each export on the target "
        "defenses and on its own (a round trip that must give the source's ASR), one run per cell in "
        "SOURCE_RUN's store, with the exported seeds and guidance (cached: a rerun computes nothing), and write transfer.csv (long form), transfer.md and heatmaps: rows = the "
        "defense the prompts were found against, columns = the defense they were replayed on, cells = ASR "
        "with n and 95% Wilson interval; the diagonal is the attack's ASR in SOURCE_RUN. Definitions: "
        "reports/transfer.py.")
    transfer.add_argument("source_run", type=Path, help="a run with attacks against several defenses")
    transfer.add_argument("--to", action="append", help="target defense(s), comma-separated (default: the source "
                          "run's defenses)")
    transfer.add_argument("--task", action="append", help="only these task(s)")
    transfer.add_argument("--defense", action="append", help="only the prompts found against these defense(s)")
    transfer.add_argument("--attack", action="append", help="only these attack(s)")
    transfer.add_argument("-o", "--output", type=Path, help="output folder (default: SOURCE_RUN/transfer)")
    transfer.add_argument("--device", help="device of the replays (default: the source run's)")
    transfer.add_argument("--no-plots", action="store_true", help="tables only")


def config_from_args(args: argparse.Namespace):
    data: dict = {}
    if args.suite:
        path = Path(args.suite)
        if not path.is_file():
            path = SUITES.get(args.suite)
        data = load_suite_file(path)
        data.setdefault("name", Path(path).stem)  # run directories are named after their suite
    flags = {
        "model": args.model, "model_revision": args.model_revision, "tasks": args.task,
        "defenses": args.defense, "attacks": args.attack, "prompts": args.prompts,
        "prompt_column": args.prompt_column, "benign_prompts": args.benign_prompts,
        "max_prompts": args.max_prompts, "max_benign": args.max_benign, "device": args.device,
        "dtype": args.dtype, "data_dir": args.data_dir, "name": args.name, "out": args.out, "plugins": args.plugin,
    }
    sampler = {"images_per_prompt": args.images_per_prompt, "num_inference_steps": args.steps,
               "guidance_scale": args.guidance, "height": args.height, "width": args.width,
               "batch_size": args.batch_size, "seed": args.seed}
    flags["sampler"] = {k: v for k, v in sampler.items() if v is not None}
    options: dict[str, dict] = {}
    for assignment in args.option:
        kind, name, key, value = parse_option(assignment)
        options.setdefault(f"{kind}_options", {}).setdefault(name, {})[key] = value
    merged = merge(data, flags)
    for table, values in options.items():
        current = {k: dict(v) for k, v in merged.get(table, {}).items()}
        for name, opts in values.items():
            current.setdefault(name, {}).update(opts)
        merged[table] = current
    return config_from_mapping(merged, origin=str(args.suite or "command line"))


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.harness.resolve import resolve
    from benchmark.harness.runner import RunIncompleteError, execute
    from benchmark.harness.scale import WorkersFailedError
    from benchmark.shard import launch_from_env

    launch = launch_from_env()
    executor = None
    if args.executor is not None or args.workers is not None:
        if args.executor is None:
            raise UserError("--workers needs --executor local or slurm (under torchrun the number of processes "
                            "is the number of workers)")
        if launch is not None:
            raise UserError("--executor inside torchrun / accelerate launch: use one or the other")
        from benchmark.harness.executors import check_executor, executor_options  # deferred: imports submitit

        executor = executor_options(args)
        check_executor(executor)
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
        summary = failed.summary
        print(summary.markdown)
        for counter in summary.counters:
            print(counter)
        print(f"error: {len(failed.failures)} cell(s) failed; the leaderboard marks them failed, every other cell "
              f"was computed and kept (details: {summary.run_dir / 'failures.json'}):", file=sys.stderr)
        for line in failed.failures:
            print(f"  {line}", file=sys.stderr)
        print(summary.run_dir)
        return 3
    except (RunIncompleteError, WorkersFailedError) as incomplete:
        return report_incomplete(incomplete)
    return print_summary(summary)


def print_summary(summary) -> int:
    print(summary.markdown)
    for counter in summary.counters:
        print(counter)
    if any(c.computed for c in summary.counters):
        print(cost_line(summary.counters))
    print(summary.run_dir)
    return 0


def report_incomplete(error: Exception) -> int:
    """Exit 4: a multi-process run that some worker did not finish. What is missing, and what to do."""
    missing = getattr(error, "missing", [])
    print(f"error: {error}", file=sys.stderr)
    for cell in missing[:10]:
        print(f"  missing {cell.stage}: {cell.what}", file=sys.stderr)
    if len(missing) > 10:
        print(f"  ... and {len(missing) - 10} more", file=sys.stderr)
    if missing:
        print("rerun the run's command to compute the missing cells (only those), then merge", file=sys.stderr)
    return 4


def cmd_merge(args: argparse.Namespace) -> int:
    from benchmark.harness.runner import RunIncompleteError
    from benchmark.harness.scale import merge as merge_run

    run_dir = existing_folder(args.run_dir, "RUN_DIR")
    quiet_library_progress()
    try:
        summary = merge_run(run_dir)
    except RunFailedError as failed:
        print(failed.summary.markdown)
        print(f"error: {len(failed.failures)} cell(s) failed (details: {failed.summary.run_dir / 'failures.json'})",
              file=sys.stderr)
        return 3
    except RunIncompleteError as incomplete:
        return report_incomplete(incomplete)
    return print_summary(summary)


def cmd_list(args: argparse.Namespace) -> int:
    for plugin in args.plugin:
        load_plugin(plugin)
    if args.options:
        return print_options(args.options)
    registries = [REGISTRIES_BY_KIND[args.kind]] if args.kind else ALL_REGISTRIES
    for registry in registries:
        entries = list(registry.entries())
        print(f"{registry.kind} ({len(entries)}):")
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            origin = "" if entry.source == "builtin" else f"  [{entry.source}]"
            print(f"  {entry.name:<{width}}  {entry.description}{origin}")
    return 0


def print_options(target: str) -> int:
    """``list --options NAME``: the component's options as a table."""
    registries = {"defense": DEFENSES, "attack": ATTACKS, "judge": JUDGES}
    kind, sep, name = target.partition(":")
    if sep and kind not in registries:
        raise UserError(f"--options {target}: KIND must be defense, attack or judge")
    if not sep:
        name = target
    candidates = [(k, r) for k, r in registries.items() if (not sep or k == kind) and name in r]
    if not candidates:
        registry = registries[kind] if sep else DEFENSES
        close = [n for r in registries.values() for n in r.names()]
        import difflib

        hint = difflib.get_close_matches(name, close, n=3)
        raise UserError(f"--options {target}: no defense, attack or judge of that name"
                        + (f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else "")
                        + f" (`python -m benchmark list {registry.kind}`)")
    if len(candidates) > 1:
        raise UserError(f"--options {name}: both a {' and a '.join(k for k, _ in candidates)}; "
                        f"write {candidates[0][0]}:{name}")
    kind, registry = candidates[0]
    cls = registry.get(name)
    print(f"{kind} {name}: {registry.entry(name).description}")
    infos = cls.option_infos()
    if not infos:
        print("  (no options)")
    for info in infos:
        allowed = f"; {info.allowed}" if info.allowed else ""
        print(f"  {info.name} ({info.type}{allowed}) = {info.default!r}")
        if info.help:
            print(f"      {info.help}")
    print(f"Set one with --option {kind}:{name}.KEY=VALUE")
    return 0


def existing_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} {path}: no such folder; pass a run directory (the last line `run` prints) or a "
                        "folder of reference entries such as reports/leaderboard")
    return path


def cmd_report(args: argparse.Namespace) -> int:
    from benchmark.store import atomic_write_text
    from reports.build import ReportOptions, build_report
    from reports.leaderboard import render_markdown
    from reports.results import load

    results = load(existing_folder(args.run_dir, "run_dir"))
    options = ReportOptions(plots=not args.no_plots, grid_count=args.grid_count, unblurred=args.unblurred,
                            grid_prompts=[p for p in (args.grid_prompts or "").split(",") if p])
    out = args.out or args.run_dir / "report"
    files = build_report(results, out, options)
    markdown = render_markdown(results.board, results.judges)
    if results.kind == "run":
        atomic_write_text(args.run_dir / "leaderboard.csv", results.board.to_csv(index=False))
        atomic_write_text(args.run_dir / "leaderboard.md", markdown)
    if args.write_entries:
        from reports.entries import write_entries

        written = write_entries(results, args.write_entries)
        log.info("wrote %d reference entries under %s", len(written), args.write_entries)
    print(markdown)
    log.info("%d report files in %s", len(files.files), out)
    print(out / "report.html")
    return 0


def print_suite_source(suite: str) -> None:
    """A paper suite's source and published protocol (the runner ignores them) under the resolved config."""
    from reports.published import suite_source

    source = suite_source(suite)
    if source:
        print("# source (not a run key: where the published numbers come from, and their protocol)")
        print(yaml.safe_dump({"source": source}, sort_keys=False, allow_unicode=True, width=110))


def cmd_compare_published(args: argparse.Namespace) -> int:
    from reports.published import compare_published, exit_code, render
    from reports.results import load

    if args.new is not None:
        raise UserError("--published takes one run: compare RUN --published SUITE")
    comparison = compare_published(load(existing_folder(args.base, "RUN")), args.published,
                                   allow_mismatch=args.allow_protocol_mismatch)
    print(render(comparison, str(args.base)), end="")
    return exit_code(comparison)


def cmd_compare(args: argparse.Namespace) -> int:
    from reports.compare import CompareOptions, compare, exit_code, render
    from reports.results import load

    if args.published:
        return cmd_compare_published(args)
    if args.new is None:
        raise UserError("compare needs BASE and NEW (or one run and --published SUITE)")
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    against = {}
    for pair in args.against:
        new_name, sep, base_name = pair.partition("=")
        if not sep or not new_name or not base_name:
            raise UserError(f"--against takes NEW_DEFENSE=BASE_DEFENSE, got {pair!r}")
        against[new_name] = base_name
    base, new = load(existing_folder(args.base, "BASE")), load(existing_folder(args.new, "NEW"))
    comparison = compare(base, new, CompareOptions(confidence=args.confidence, asr_margin=args.asr_margin,
                                                   utility_tolerance=args.utility_tolerance, against=against))
    print(render(comparison, str(args.base), str(args.new)), end="")
    return exit_code(comparison)


def cmd_export(args: argparse.Namespace) -> int:
    from benchmark.harness.transfer import embeds_locator
    from reports.export import export_run

    run_dir = existing_folder(args.run_dir, "RUN_DIR")
    exported = export_run(run_dir, args.output, tasks=split_names(args.task), defenses=split_names(args.defense),
                          attacks=split_names(args.attack), fmt=args.format, locate=embeds_locator(run_dir))
    for cell in exported:
        print(cell.line())
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from benchmark.harness.transfer import run_transfer
    from reports.transfer import render_markdown

    source = existing_folder(args.source_run, "SOURCE_RUN")
    quiet_library_progress()
    result = run_transfer(source, args.output or source / "transfer", targets=split_names(args.to),
                          tasks=split_names(args.task), defenses=split_names(args.defense),
                          attacks=split_names(args.attack), device=args.device, plots=not args.no_plots)
    print(render_markdown(result.matrix))
    for line in result.failures:
        print(f"error: replay cell failed: {line}", file=sys.stderr)
    print(result.files[0].parent)
    return 3 if result.failures else 0


def quiet_libraries(verbose: bool) -> None:
    """The run prints its own progress and warnings: libraries' advice (transformers' torchvision notices,
    diffusers' accelerate hint) is turned down unless ``-v``."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for noisy in ("httpx", "huggingface_hub", "diffusers", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    for module in ("transformers", "diffusers", "torchvision", "huggingface_hub", "torch"):
        warnings.filterwarnings("ignore", module=module)


def quiet_library_progress() -> None:
    """diffusers' and transformers' own loading bars ("Loading pipeline components", "Loading weights"): the
    run shows one bar per stage instead. Imports both, so only commands that load models call it."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.verbose)
    handlers = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "compare": cmd_compare,
                "merge": cmd_merge, "export": cmd_export, "transfer": cmd_transfer}
    try:
        return handlers[args.command](args)
    except UserError as error:  # bad input: one line, exit 2; anything else is a bug and keeps its traceback
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
