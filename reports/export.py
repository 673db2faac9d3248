"""Export a run's adversarial prompts as a reusable, transferable artifact (``python -m benchmark export``).

One file per (task, defense, attack) cell of a run, in the column layout of the UnlearnDiff prompt CSVs
(OPTML-Group/Diffusion-MU-Attack ``prompts/*.csv``: ``case_number, prompt, evaluation_seed,
evaluation_guidance``), so the UnlearnDiff loader, other tools and ``--attack prompt-set`` read it back:

* ``case_number``: the task prompt's id (the replay matches prompts by it);
* ``prompt``: the adversarial text the run sampled. For an embedding-only result it is the *source* prompt
  (the format needs a text), and ``embeds_file`` / ``embeds_key`` name the tensor that was sampled instead
  (a safetensors file beside the CSV, one key per case number); for a prompt the attack could not process
  (``attack_status`` failed) it is the source prompt too, and a replay counts it as not broken again;
* ``evaluation_seed`` / ``evaluation_guidance``: the seed and guidance of the run's first image of the prompt
  (replayed with ``--prompts FILE --prompt-column source_prompt``, they are the replay's seeds too);
* then :data:`PROVENANCE_COLUMNS`: the source prompt and task, the attack, its options (JSON) and cost, its
  outcome at the source (flagged, blocked, the judge's score, name and threshold) and the source run,
  model and defense.

Everything is read from the run directory (``records.parquet``, ``config.yaml``, ``provenance.json``) and its
store (the run directory's parent); a stored path that leads out of the store (absolute, or with ``..``)
is refused. Cells whose attack raised (``attack_status`` error) have no result and are not exported; the
export says how many it left out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import yaml

from benchmark.api.errors import PathEscapeError, UserError
from benchmark.api.registry import ATTACKS
from benchmark.records import ATTACK_ERROR
from benchmark.store import CellStore, atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# The UnlearnDiff layout first (the loader needs the first three), then where each prompt came from.
UNLEARNDIFF_COLUMNS = ["case_number", "prompt", "evaluation_seed", "evaluation_guidance"]
PROVENANCE_COLUMNS = [
    "source_prompt", "task", "attack", "attack_options", "attack_status", "attack_message", "attack_seconds",
    "attack_queries", "truncated", "flagged", "blocked", "score", "judge", "judge_preset", "judge_threshold",
    "images", "num_inference_steps", "height", "width", "embeds_file", "embeds_key", "source_run",
    "source_model", "source_model_key", "source_defense", "source_defense_key", "source_commit",
]
EXPORT_COLUMNS = UNLEARNDIFF_COLUMNS + PROVENANCE_COLUMNS
FORMATS = ("csv", "hf")
NO_ATTACK = "none"

# (row of the export, its records) -> store-relative path of the row's embedding, or None. The run's
# generate stage knows how an embedding image is keyed; the CLI passes the lookup (see benchmark.cli).
EmbedsLocator = Callable[[pd.Series], "str | None"]


class ExportError(UserError):
    """Nothing to export, an ambiguous selection, or a run directory that is not one."""


@dataclass
class ExportedCell:
    """One written export: a (task, defense, attack) cell of the run."""

    task: str
    defense: str
    attack: str
    path: Path
    rows: int
    embeddings: int = 0
    failed: int = 0  # prompts the attack could not process (exported, marked failed)
    files: list[Path] = field(default_factory=list)

    def line(self) -> str:
        extra = f", {self.embeddings} embedding row(s)" if self.embeddings else ""
        extra += f", {self.failed} failed at the source" if self.failed else ""
        return f"{self.task} / {self.defense} / {self.attack}: {self.rows} prompt(s){extra} -> {self.path}"


def check_relpath(relpath: str, what: str) -> str:
    """A path stored in a record must be relative and stay below its root: no absolute path, no ``..``."""
    path = PurePosixPath(str(relpath).replace("\\", "/"))
    if path.is_absolute() or str(relpath).startswith(("/", "\\")) or (len(str(relpath)) > 1 and
                                                                     str(relpath)[1] == ":"):
        raise PathEscapeError(f"{what} {relpath!r} is absolute; stored paths must be relative to the store")
    if ".." in path.parts:
        raise PathEscapeError(f"{what} {relpath!r} contains '..'; stored paths must stay inside the store")
    return str(path)


def read_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A run directory's records and resolved config (with ``_commit``: the git commit its provenance
    names, "" when unknown)."""
    records_path, config_path = run_dir / "records.parquet", run_dir / "config.yaml"
    if not records_path.is_file() or not config_path.is_file():
        raise ExportError(f"{run_dir} is not a finished run directory (it needs records.parquet and config.yaml; "
                          "pass the directory `run` printed as its last line)")
    records = pd.read_parquet(records_path)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    provenance = run_dir / "provenance.json"
    git = json.loads(provenance.read_text(encoding="utf-8")).get("git") or {} if provenance.is_file() else {}
    config["_commit"] = str(git.get("commit") or "") + ("-dirty" if git.get("dirty") else "")
    return records, config


def select_cells(records: pd.DataFrame, tasks: Sequence[str] = (), defenses: Sequence[str] = (),
                 attacks: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """The (task, defense, attack) cells with attack results that match the filters (empty: any; the
    attack ``none`` only when asked for by name). Raises when a filter names nothing in the run."""
    rows = records[(records["role"] == "attack") & (records["judge_role"] == "concept")]
    for column, wanted in (("task", tasks), ("defense", defenses), ("attack", attacks)):
        unknown = sorted(set(wanted) - set(rows[column].astype(str)))
        if unknown:
            raise ExportError(f"--{column} {','.join(unknown)}: not in this run (it has: "
                              f"{', '.join(sorted(set(rows[column].astype(str))))})")
        if wanted:
            rows = rows[rows[column].isin(list(wanted))]
    if not attacks:
        rows = rows[rows["attack"] != NO_ATTACK]
    cells = list(dict.fromkeys(zip(rows["task"].astype(str), rows["defense"].astype(str),
                                   rows["attack"].astype(str), strict=True)))
    if not cells:
        raise ExportError("no attack results to export in this run (only the attack 'none'? name it with "
                          "--attack none to export the task's prompts as they are)")
    return cells


def attack_options(attack: str, config: dict[str, Any]) -> dict[str, Any]:
    """The attack's options as the run resolved them (defaults filled); the options the run gave when the
    attack is not registered here (a plugin that is not loaded)."""
    given = dict((config.get("attack_options") or {}).get(attack, {}))
    try:
        cls = ATTACKS.get(attack)
        return dataclasses.asdict(cls.validate_options(given))
    except UserError:
        return given


def cell_rows(records: pd.DataFrame, cell: tuple[str, str, str], config: dict[str, Any]) -> pd.DataFrame:
    """One export row per prompt of the cell (its first image gives seed and guidance; its images together
    give the outcome, as the ASR counts it: any image flagged and not blocked)."""
    task, defense, attack = cell
    rows = records[(records["role"] == "attack") & (records["judge_role"] == "concept") & (records["task"] == task)
                   & (records["defense"] == defense) & (records["attack"] == attack)]
    rows = rows[rows["attack_status"] != ATTACK_ERROR]
    options = json.dumps(attack_options(attack, config), sort_keys=True, default=str)
    out = []
    for prompt_id, group in rows.groupby("prompt_id", sort=False):
        group = group.sort_values("image_index")
        first = group.iloc[0]
        ok = first["attack_status"] == "ok"
        hits = group["flagged"].fillna(False).astype(bool) & ~group["blocked"].fillna(False).astype(bool)
        text = first["adversarial_prompt"]
        has_text = isinstance(text, str) and bool(text.strip())
        out.append({
            "case_number": str(prompt_id),
            "prompt": text if ok and has_text else first["source_prompt"],
            "evaluation_seed": int(first["seed"]),
            "evaluation_guidance": float(first["guidance_scale"]),
            "source_prompt": first["source_prompt"], "task": task, "attack": attack, "attack_options": options,
            "attack_status": first["attack_status"], "attack_message": first["attack_message"] or "",
            "attack_seconds": float(first["attack_seconds"]), "attack_queries": int(first["attack_queries"]),
            "truncated": bool(first["truncated"]), "flagged": bool(ok and hits.any()),
            "blocked": bool(group["blocked"].fillna(False).astype(bool).any()),
            "score": _max(group["score"]), "judge": first["judge"], "judge_preset": first["judge_preset"],
            "judge_threshold": first["judge_threshold"], "images": len(group),
            "num_inference_steps": int(first["num_inference_steps"]), "height": int(first["height"]),
            "width": int(first["width"]), "embeds_file": "", "embeds_key": "",
            "source_run": first["run_id"], "source_model": first["model"], "source_model_key": first["model_key"],
            "source_defense": defense, "source_defense_key": first["defense_key"],
            "source_commit": config.get("_commit", ""),
            # Needed to find the embedding; not written.
            "_embedding": bool(ok and not has_text), "_image_path": first["image_path"],
        })
    return pd.DataFrame(out)


def _max(values: pd.Series) -> float:
    clean = values.dropna()
    return float(clean.max()) if len(clean) else math.nan


def file_name(cell: tuple[str, str, str], fmt: str) -> str:
    task, defense, attack = cell
    stem = "__".join(_slug(part) for part in (task, defense, attack))
    return f"{stem}.csv" if fmt == "csv" else stem


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".") or "_"


def embeds_name(path: Path) -> str:
    """The safetensors file beside an export (``x.csv`` -> ``x.embeds.safetensors``)."""
    return f"{path.stem if path.suffix == '.csv' else path.name}.embeds.safetensors"


def write_embeddings(frame: pd.DataFrame, store: CellStore, out: Path, locate: EmbedsLocator | None) -> int:
    """Copy the embedding of every embedding row into ``out`` (key: case number); fills the rows'
    ``embeds_file`` / ``embeds_key``. Returns the number of embeddings."""
    wanted = frame.index[frame["_embedding"]]
    if not len(wanted):
        return 0
    if locate is None:
        raise ExportError("this cell has embedding-only results, and no way to find their cells was given")
    from safetensors.torch import load_file, save  # deferred: only embedding attacks need it

    tensors = {}
    for index in wanted:
        row = frame.loc[index]
        relpath = locate(row)
        if relpath is None:
            raise ExportError(f"prompt {row['case_number']} of {row['attack']} on {row['source_defense']}: its "
                              "embedding is not in the store (was the store moved or cleaned?)")
        path = store.resolve(check_relpath(relpath, "embeds_path"))
        tensors[str(row["case_number"])] = load_file(str(path))["prompt_embeds"].contiguous()
        frame.loc[index, ["embeds_file", "embeds_key"]] = [out.name, str(row["case_number"])]
    atomic_write_bytes(out, save(tensors, metadata={"format": "unlearn-arena export", "key": "case_number"}))
    return len(tensors)


def export_cell(records: pd.DataFrame, config: dict[str, Any], store: CellStore, cell: tuple[str, str, str],
                out: Path, fmt: str = "csv", locate: EmbedsLocator | None = None) -> ExportedCell:
    """Write one cell's export to ``out`` (a CSV file, or a ``datasets`` folder for ``hf``)."""
    for value in records.loc[records["image_path"].notna(), "image_path"]:
        check_relpath(value, "image_path")  # records that point out of the store are not trusted at all
    frame = cell_rows(records, cell, config)
    if frame.empty:
        raise ExportError(f"{' / '.join(cell)}: no prompt results (its attack raised for every prompt)")
    out.parent.mkdir(parents=True, exist_ok=True)
    embeds_path = out.parent / embeds_name(out) if fmt == "csv" else out / embeds_name(out)
    if fmt == "hf":
        _hf_dataset(frame[EXPORT_COLUMNS].head(0))  # without datasets: fails before anything is written
        if out.exists() and any(out.iterdir()) and not (out / "data").is_dir():
            raise ExportError(f"-o {out}: a folder that is not an export already exists there; give a new path")
        shutil.rmtree(out, ignore_errors=True)  # an earlier export of this cell: replaced whole
        out.mkdir(parents=True)
    embeddings = write_embeddings(frame, store, embeds_path, locate)
    table = frame[EXPORT_COLUMNS]
    if fmt == "csv":
        atomic_write_text(out, table.to_csv(index=False))
    else:
        _hf_dataset(table).save_to_disk(str(out / "data"))
    files = [out] + ([embeds_path] if embeddings else [])
    return ExportedCell(*cell, path=out, rows=len(table), embeddings=embeddings,
                        failed=int((table["attack_status"] == "failed").sum()), files=files)


def _hf_dataset(table: pd.DataFrame):
    try:
        import datasets
    except ImportError:
        raise ExportError("--format hf needs the 'datasets' package: pip install -e \".[hub]\" (or use "
                          "--format csv)") from None
    return datasets.Dataset.from_pandas(table, preserve_index=False)


def export_run(run_dir: Path, out: Path, *, tasks: Sequence[str] = (), defenses: Sequence[str] = (),
               attacks: Sequence[str] = (), fmt: str = "csv",
               locate: EmbedsLocator | None = None) -> list[ExportedCell]:
    """Export the selected cells of ``run_dir``. One cell: ``out`` is the file (or the hf folder). Several:
    ``out`` is a folder, one ``<task>__<defense>__<attack>.csv`` per cell."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    records, config = read_run(run_dir)
    store = CellStore(run_dir.resolve().parent)  # the store is the run directory's parent, whatever config says
    cells = select_cells(records, tasks, defenses, attacks)
    many = len(cells) > 1
    if many and out.suffix == ".csv":
        listed = "; ".join(" / ".join(c) for c in cells)
        raise ExportError(f"{len(cells)} cells match ({listed}): pick one with --task/--defense/--attack, or "
                          f"give -o a folder to write one file per cell")
    done = []
    for cell in cells:
        target = out / file_name(cell, fmt) if many or out.is_dir() else out
        done.append(export_cell(records, config, store, cell, target, fmt, locate))
    return done
