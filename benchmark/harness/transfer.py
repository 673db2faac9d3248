"""``export`` and ``transfer``: a run's adversarial prompts as files, and replayed on other defenses.

* :func:`embeds_locator`: where an exported embedding-only result lives. Records do not name the attack
  cell that held the embedding; its image's key does (the generate stage keys an embedding image by the
  attack cell's content-addressed name), so the candidates (embedding attack cells of the same prompt id)
  are checked against the image's key.
* :func:`run_transfer`: export every selected (task, defense, attack) cell of a source run, replay each
  export on the target defenses and on its own (the round trip: its ASR must equal the source's; a
  difference is logged), one run per cell in the source's store, so images the source already drew are
  reused, and build the transfer matrix (:mod:`reports.transfer`).

A replay samples each prompt with the exported seed and guidance: the export is also the replay run's task
prompt file (``prompts`` = the export, ``prompt_column`` = ``source_prompt``), so ``Prompt.seed`` /
``Prompt.guidance`` carry them into the generate stage, and the attack ``prompt-set`` replays its
``prompt`` column (or embedding) by case number.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import yaml

from benchmark.api.errors import RunFailedError, UserError
from benchmark.harness.config import config_from_mapping
from benchmark.harness.runner import execute
from benchmark.harness.stages.generate import image_key
from benchmark.store import CellStore
from reports.export import EmbedsLocator, ExportedCell, check_relpath, export_run, read_run
from reports.transfer import Replay, transfer_matrix, write_transfer

log = logging.getLogger(__name__)


def embeds_locator(run_dir: Path) -> EmbedsLocator:
    """The store-relative embedding path of an export row of ``run_dir`` (None when not found). Every path
    read from the store's records is checked to stay inside it."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    store = CellStore(run_dir.resolve().parent)
    candidates: dict[str, list[tuple[str, str]]] | None = None

    def index() -> dict[str, list[tuple[str, str]]]:
        found: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for tensor in sorted((store.cells / "attack").glob("*/*.safetensors")):
            sidecar = tensor.with_suffix(".json")
            if not sidecar.is_file():
                continue
            record = store.read_json_path(sidecar)
            if record.get("embeds_path"):
                found[str(record.get("prompt_id"))].append((tensor.stem, str(record["embeds_path"])))
        return found

    def locate(row: pd.Series) -> str | None:
        nonlocal candidates
        image = row.get("_image_path")
        if not isinstance(image, str) or not image:
            return None
        target = PurePosixPath(check_relpath(image, "image_path")).stem
        if candidates is None:
            candidates = index()
        for attack_key, embeds_path in candidates.get(str(row["case_number"]), []):
            key = image_key(model_key=str(row["source_model_key"]), defense_key=str(row["source_defense_key"]),
                            text=None, embeds_hash=attack_key, seed=int(row["evaluation_seed"]),
                            guidance=float(row["evaluation_guidance"]), steps=int(row["num_inference_steps"]),
                            height=int(row["height"]), width=int(row["width"]), device=str(config.get("device")),
                            dtype=str(config.get("dtype")))
            if key == target:
                return check_relpath(embeds_path, "embeds_path")
        return None

    return locate


@dataclass
class TransferResult:
    matrix: pd.DataFrame
    exports: list[ExportedCell]
    replay_runs: list[Path]
    files: list[Path]
    failures: list[str] = field(default_factory=list)


def replay_config(source: dict[str, Any], export: ExportedCell, targets: list[str], store_root: Path,
                  device: str | None) -> dict[str, Any]:
    """The run that replays ``export`` on ``targets``: the source's model, task, sampler and component
    options; the export as the task's prompts (its seeds and guidance) and as the prompt-set file."""
    defenses = list(dict.fromkeys([export.defense, *targets]))  # on its own defense too: the round trip
    attack_options = {**(source.get("attack_options") or {}), "prompt-set": {"file": str(export.path.resolve())}}
    return {
        "model": source.get("model", "sd-mini"), "model_revision": source.get("model_revision"),
        "tasks": [export.task], "defenses": defenses, "attacks": ["prompt-set"],
        "prompts": str(export.path.resolve()), "prompt_column": "source_prompt", "max_prompts": None,
        "max_benign": 0, "sampler": dict(source.get("sampler") or {}),
        "defense_options": source.get("defense_options") or {}, "attack_options": attack_options,
        "judge_options": source.get("judge_options") or {}, "device": device or source.get("device", "auto"),
        "dtype": source.get("dtype", "auto"), "data_dir": source.get("data_dir"),
        "name": f"transfer-{export.defense}-{export.attack}", "out": str(store_root),
        "plugins": source.get("plugins") or [],
    }


def run_transfer(source_run: Path, out: Path, *, targets: list[str] | None = None, tasks: list[str] | None = None,
                 defenses: list[str] | None = None, attacks: list[str] | None = None, device: str | None = None,
                 plots: bool = True) -> TransferResult:
    """Export, replay on ``targets`` (default: the source run's defenses), and write the matrix to ``out``."""
    records, source = read_run(source_run)
    if attacks and "prompt-set" in attacks:
        raise UserError("--attack prompt-set: a replay is not a source of new prompts; name the attack that found them")
    store_root = source_run.resolve().parent
    exports_dir = out / "exports"
    exports_dir.mkdir(parents=True, exist_ok=True)
    exports = export_run(source_run, exports_dir, tasks=tasks or (), defenses=defenses or (), attacks=attacks or (),
                         locate=embeds_locator(source_run))
    targets = targets or list(source.get("defenses") or [])
    replays, runs, failures = [], [], []
    for export in exports:
        log.info("replaying %s / %s / %s on %s", export.task, export.defense, export.attack, ", ".join(targets))
        config = config_from_mapping(replay_config(source, export, targets, store_root, device),
                                     origin=f"transfer of {export.path.name}")
        try:
            summary = execute(config)
        except RunFailedError as failed:
            summary = failed.summary
            failures += failed.failures
        runs.append(summary.run_dir)
        replay_records = pd.read_parquet(summary.run_dir / "records.parquet")
        replays.append(Replay(export.task, export.defense, export.attack, replay_records))
    matrix = transfer_matrix(records, replays)
    check_round_trip(matrix)
    files = write_transfer(matrix, out, plots=plots)
    return TransferResult(matrix, exports, runs, files, failures)


def check_round_trip(matrix: pd.DataFrame) -> None:
    """An export replayed on its own defense should break the prompts the source broke: log when not."""
    keys = ["model", "task", "attack", "source_defense", "target_defense"]
    original = matrix[matrix["kind"] == "original"].set_index(keys)["asr"]
    for row in matrix[matrix["kind"] == "replay"].itertuples(index=False):
        key = tuple(getattr(row, k) for k in keys)
        if key in original.index and not abs(original[key] - row.asr) < 1e-9:
            log.warning("%s / %s on %s: the replay's ASR %.3f differs from the source's %.3f (a defense or "
                        "judge that is not deterministic, or another device?)", row.task, row.attack,
                        row.source_defense, row.asr, original[key])
