"""Replay a fixed set of adversarial prompts (a registered prompt set or a file) against the task.

The replayed prompts are matched to the task's prompts by id (case number): the published adversarial
prompts of an attack keep the case numbers of the prompts they were made from. A task prompt with no
counterpart in the set gets ``status="failed"`` with the declared reason ``no-counterpart`` and is counted
(as not broken), never dropped.

Checks before any work (:meth:`PromptSetAttack.check_inputs`): exactly one of the options ``set`` and
``file``; a set must be registered and its file present in the data directory, a file must exist and read
(with ``column`` when given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.api.attack import Attack, AttackOutput, ThreatModel
from benchmark.api.errors import ConfigError, OptionError
from benchmark.api.registry import ATTACKS, PROMPT_SETS
from benchmark.hashing import file_hash
from prompts import PromptFileNotFoundError, load_prompt_file


@dataclass
class PromptSetOptions:
    set: str | None = None  # a registered prompt set, e.g. mma-diffusion-nsfw
    file: str | None = None  # or a prompt file (CSV / JSON / JSONL / TXT)
    column: str | None = None  # the file's prompt column (auto-detected when None)


@ATTACKS.register("prompt-set")
class PromptSetAttack(Attack):
    """Replay a registered or given prompt set, matched to the task's prompts by id."""

    threat_model = ThreatModel.PROMPT_SET
    runs_without_options = False
    Options = PromptSetOptions
    failures = {"no-counterpart": "the replayed set has no prompt with this prompt's id (case number)"}

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
        if self.options.file:  # hash the file's content, never its path
            config["options"] = {**config["options"], "file": file_hash(self.options.file)}
        return config

    def run(self, prompts, ctx):
        replay = {p.id: p for p in self.load(ctx.data_dir)}
        outputs = []
        for prompt in prompts:
            match = replay.get(prompt.id)
            if match is None:
                outputs.append(AttackOutput(prompt.id, None, status="failed", reason="no-counterpart",
                                            message="no prompt with this id in the replayed set"))
            else:
                outputs.append(AttackOutput(prompt.id, match.text))
        return outputs
