"""What several commands share: exit codes, quieting libraries, checking folders, printing a run's end."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from benchmark.api.errors import UserError
from benchmark.harness.stages import cost_line

log = logging.getLogger("benchmark")

EXIT_OK = 0
EXIT_REGRESSION = 1  # compare / ci: some defense got significantly worse
EXIT_USER_ERROR = 2  # bad input, one line saying what to fix
EXIT_FAILED_CELLS = 3  # some cells raised; every other cell was computed and kept
EXIT_INCOMPLETE = 4  # a multi-process run some worker did not finish
EXIT_BUG = 70  # an unexpected exception (sysexits' EX_SOFTWARE): the traceback is printed

OUT_HELP = "where this command writes"  # -o/--out means this for every command; each says what it writes there


def existing_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} {path}: no such folder; pass a run directory (the last line `run` prints) or a "
                        "folder of reference entries such as reports/leaderboard")
    return path


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


def print_summary(summary: Any) -> int:
    """A finished run: its leaderboard, what was computed and reused, its cost, and its folder last."""
    print(summary.markdown)
    for counter in summary.counters:
        print(counter)
    if any(c.computed for c in summary.counters):
        print(cost_line(summary.counters))
    print(summary.run_dir)
    return EXIT_OK


def print_failed(failed: Any) -> int:
    """Exit 3: the run finished but some cells raised; they are listed, every other cell was kept."""
    summary = failed.summary
    print(summary.markdown)
    for counter in summary.counters:
        print(counter)
    print(f"error: {len(failed.failures)} cell(s) failed; the leaderboard marks them failed, every other cell "
          f"was computed and kept (details: {summary.run_dir / 'failures.json'}):", file=sys.stderr)
    for line in failed.failures:
        print(f"  {line}", file=sys.stderr)
    print(summary.run_dir)
    return EXIT_FAILED_CELLS


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
    return EXIT_INCOMPLETE
