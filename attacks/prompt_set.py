"""Replay a fixed set of adversarial prompts (a registered prompt set or a file) against the task.

The replayed prompts are matched to the task's prompts by id (case number): the published adversarial
prompts of an attack keep the case numbers of the prompts they were made from. A task prompt with no
counterpart in the set gets ``status="failed"`` with the declared reason ``no-counterpart`` and is counted
(as not broken), never dropped.

Checks before any work (:meth:`PromptSetAttack.check_inputs`): exactly one of the options ``set`` and
``file``; a set must be registered and its file present in the data directory, a file must exist and read
(with ``column`` when given).

An export of a run (``python -m benchmark export``, :mod:`reports.export`) replays as its source sampled it:

* a row with ``embeds_file`` / ``embeds_key`` replays its prompt embedding (the safetensors file beside
  the CSV, a plain file name; its content enters the attack's cell key) instead of its text;
* a row with ``attack_status`` failed (the attack could not process the prompt at the source) is failed
  again, with the declared reason ``failed-at-source`` (counted, not broken);
* its ``evaluation_seed`` / ``evaluation_guidance`` are the seed and guidance of the source's images. The
  generate stage takes both from the task's prompt, so a replay whose task prompts would be sampled with
  another seed or guidance fails its cell, saying to pass ``--prompts FILE --prompt-column source_prompt``
  (the export's rows as the task's prompts: their seeds and guidance are then the exported ones). For
  other files a differing seed or guidance is logged, as before: the task prompt's are used.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field

from benchmark.api.attack import Attack, AttackOutput, ThreatModel
from benchmark.api.errors import ConfigError, DataFileError, OptionError, PathEscapeError
from benchmark.api.files import FilePath, check_weights_header
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS, PROMPT_SETS
from benchmark.api.sampling import image_seed
from benchmark.hashing import file_hash
from prompts import PromptFileNotFoundError, load_prompt_file

log = logging.getLogger(__name__)

# Columns of an export (reports.export) that the replay reads; an export names its source run.
EXPORT_MARKER = "source_run"


@dataclass
class PromptSetOptions:
    set: Annotated[str | None, Field(description="a registered prompt set, e.g. mma-diffusion-nsfw")] = None
    file: Annotated[FilePath | None, Field(description="or a prompt file (CSV / JSON / JSONL / TXT)")] = None
    column: Annotated[str | None, Field(description="the file's prompt column (auto-detected when None)")] = None


@ATTACKS.register("prompt-set")
class PromptSetAttack(Attack):
    """Replay a registered or given prompt set, matched to the task's prompts by id."""

    threat_model = ThreatModel.PROMPT_SET
    runs_without_options = False
    Options = PromptSetOptions
    failures = {"no-counterpart": "the replayed set has no prompt with this prompt's id (case number)",
                "failed-at-source": "the exported attack could not process this prompt in its source run"}

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options.set and self.options.file:
            raise OptionError(f"attack 'prompt-set': options set={self.options.set!r} and file={self.options.file!r} "
                              "exclude each other; give one of them")
        if self.options.column and not self.options.file:
            raise OptionError(f"attack 'prompt-set': option column={self.options.column!r} applies to option "
                              "'file' only (a registered set knows its column)")

    def check_inputs(self, ctx) -> None:
        """One source, and it can be read: a registered set with its file, or an existing prompt file."""
        if self.options.set:
            spec = PROMPT_SETS.get(self.options.set)  # an unknown name fails with 'did you mean'
            available = getattr(spec, "available", None)
            if available is not None and not available(ctx.data_dir) and not getattr(spec, "hub_dataset", None):
                raise PromptFileNotFoundError(f"attack 'prompt-set': option set={self.options.set!r}: "
                                              + spec.missing_message(ctx.data_dir))
        elif self.options.file:
            load_prompt_file(self.options.file, column=self.options.column)  # missing or malformed: one line
        else:
            raise ConfigError("attack 'prompt-set' needs a prompt set to replay: --option "
                              "attack:prompt-set.set=NAME (`python -m benchmark list prompt-sets`) or --option "
                              "attack:prompt-set.file=PATH")

    def load(self, data_dir: str | None):
        if self.options.set:
            return PROMPT_SETS.get(self.options.set).load(Path(data_dir) if data_dir else None)
        if self.options.file:
            return load_prompt_file(self.options.file, column=self.options.column)
        raise ConfigError("attack 'prompt-set' needs option 'set' or option 'file' (see check_inputs)")

    def config(self):
        config = super().config()
        if self.options.file:  # the file enters by its content (a FilePath option), and so do its embeddings
            embeds = _embeds_files(self.options.file, self.options.column)
            if embeds:  # an export's embeddings are part of what is replayed (absent: the key is as before)
                config["options"]["embeds"] = [file_hash(path) for path in embeds]
        return config

    def run(self, prompts, ctx):
        replay = {p.id: p for p in self.load(ctx.data_dir)}
        outputs = []
        for prompt in prompts:
            match = replay.get(prompt.id)
            if match is None:
                outputs.append(AttackOutput(prompt.id, None, status="failed", reason="no-counterpart",
                                            message="no prompt with this id in the replayed set"))
                continue
            check_settings(prompt, match, ctx.sampler, self.options.file)
            if str(match.meta.get("attack_status") or "ok") == "failed" and EXPORT_MARKER in match.meta:
                outputs.append(AttackOutput(prompt.id, None, status="failed", reason="failed-at-source",
                                            message=str(match.meta.get("attack_message") or "")))
            elif _embeds_key(match):
                outputs.append(AttackOutput(prompt.id, None, embeds=load_embeds(self.options.file, match)))
            else:
                outputs.append(AttackOutput(prompt.id, match.text))
        return outputs


def _embeds_key(prompt: Prompt) -> str:
    value = prompt.meta.get("embeds_key")
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def embeds_file(prompt_file: str | Path, name: Any) -> Path:
    """The safetensors file an export row names: a plain file name beside the prompt file, nothing else."""
    name = str(name or "").strip()
    if not name or name != Path(name).name or name in (".", "..") or "\\" in name:
        raise PathEscapeError(f"{prompt_file}: embeds_file {name!r} must be the plain name of a file beside it")
    path = Path(prompt_file).parent / name
    if not path.is_file():
        raise DataFileError(f"{prompt_file}: its embeddings file {path} is missing (keep it beside the CSV)")
    return path


@functools.lru_cache(maxsize=8)
def _embeds_files_cached(prompt_file: str, column: str | None, stamp: float) -> tuple[Path, ...]:
    rows = load_prompt_file(prompt_file, column=column)
    names = dict.fromkeys(str(p.meta.get("embeds_file")).strip() for p in rows if _embeds_key(p))
    return tuple(embeds_file(prompt_file, name) for name in names)


def _embeds_files(prompt_file: str, column: str | None) -> tuple[Path, ...]:
    """The embeddings files an export needs (none for any other prompt file); read once per file version."""
    return _embeds_files_cached(str(prompt_file), column, Path(prompt_file).stat().st_mtime)


def load_embeds(prompt_file: str | Path, prompt: Prompt) -> torch.Tensor:
    """The exported prompt embedding of ``prompt`` (key ``embeds_key`` of its ``embeds_file``)."""
    from safetensors import safe_open  # deferred: only exports with embeddings need it

    path, key = embeds_file(prompt_file, prompt.meta.get("embeds_file")), _embeds_key(prompt)
    check_weights_header(path, "attack 'prompt-set': embeds_file", "export the prompts again "
                         "(python -m benchmark export) or replay a file without embeddings")
    with safe_open(str(path), framework="pt") as handle:
        if key not in handle.keys():
            raise DataFileError(f"{path}: no tensor {key!r} (the embedding of case {prompt.id})")
        return handle.get_tensor(key)


def check_settings(prompt: Prompt, match: Prompt, sampler: dict[str, Any], prompt_file: str | None) -> None:
    """The replay samples with the task prompt's seed and guidance: an export must agree with them."""
    seed = image_seed(prompt.seed, int(sampler.get("seed", 0)), prompt.id, 0)
    guidance = prompt.guidance if prompt.guidance is not None else sampler.get("guidance_scale")
    seed_differs = match.seed is not None and match.seed != seed
    guidance_differs = match.guidance is not None and guidance is not None and float(match.guidance) != float(guidance)
    if not (seed_differs or guidance_differs):
        return
    what = (f"prompt {prompt.id}: the replayed file gives seed {match.seed}, guidance {match.guidance}; this run "
            f"samples it with seed {seed}, guidance {guidance}")
    if EXPORT_MARKER in match.meta:
        raise ConfigError(f"attack 'prompt-set': {what}. Replay an export with its own seeds: --prompts "
                          f"{prompt_file} --prompt-column source_prompt (python -m benchmark transfer does so)")
    log.debug("attack prompt-set: %s (the run's are used)", what)
