"""Replay a fixed set of adversarial prompts (a registered prompt set or a file) against the task.

The replayed prompts are matched to the task's prompts by id (case number): the published adversarial
prompts of an attack keep the case numbers of the prompts they were made from. A task prompt with no
counterpart in the set gets ``status="failed"`` and is counted, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attacks.base import Attack, AttackOutput, ThreatModel
from benchmark.registry import ATTACKS, PROMPT_SETS


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

    def load(self, data_dir: str | None):
        from prompts.loaders import load_prompt_file

        if self.options.set and self.options.file:
            raise ValueError("prompt-set: give either option 'set' or option 'file', not both")
        if self.options.set:
            return PROMPT_SETS.get(self.options.set).load(Path(data_dir) if data_dir else None)
        if self.options.file:
            return load_prompt_file(self.options.file, column=self.options.column)
        raise ValueError(
            "prompt-set needs a prompt set to replay: --option attack:prompt-set.set=NAME "
            "or --option attack:prompt-set.file=PATH"
        )

    def config(self):
        config = super().config()
        if self.options.file:  # hash the file's content, never its path
            from benchmark.hashing import file_hash

            config["options"] = {**config["options"], "file": file_hash(self.options.file)}
        return config

    def run(self, prompts, ctx):
        replay = {p.id: p for p in self.load(ctx.data_dir)}
        outputs = []
        for prompt in prompts:
            match = replay.get(prompt.id)
            if match is None:
                outputs.append(AttackOutput(prompt.id, None, status="failed",
                                            message="no prompt with this id in the replayed set"))
            else:
                outputs.append(AttackOutput(prompt.id, match.text))
        return outputs
