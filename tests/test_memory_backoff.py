"""Out-of-memory back-off: a batch that runs out of memory is halved and retried, logged and recorded; only a
batch of one that does not fit is an error (one that says what to do). The out-of-memory error is simulated
(``torch.OutOfMemoryError``, what CUDA raises), so this runs on CPU."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from benchmark.api.memory import Backoff, OutOfMemoryAtBatchOneError, is_out_of_memory
from conftest import run_cli


def fits_at_most(limit: int, seen: list[list[int]]):
    def process(batch):
        if len(batch) > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(batch)} GiB")
        seen.append(list(batch))
    return process


def test_a_batch_that_does_not_fit_is_halved_until_it_fits_and_every_item_is_done_once():
    seen: list[list[int]] = []
    backoff = Backoff(8, "generate toy/none")
    backoff.run(list(range(11)), fits_at_most(3, seen))
    assert [i for batch in seen for i in batch] == list(range(11))  # in order, each once
    assert max(len(b) for b in seen) == 2 and backoff.batch_size == 2  # 8 -> 4 -> 2, kept for the rest
    assert backoff.events == [{"what": "generate toy/none", "from": 8, "to": 4},
                              {"what": "generate toy/none", "from": 4, "to": 2}]


def test_other_errors_are_not_retried():
    calls = []

    def process(batch):
        calls.append(batch)
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        Backoff(4, "x").run([1, 2, 3, 4], process)
    assert len(calls) == 1


def test_one_item_that_does_not_fit_says_what_to_do():
    with pytest.raises(OutOfMemoryAtBatchOneError, match=r"--dtype fp16 or bf16.*rerunning"):
        Backoff(4, "generate toy/none").run([1, 2], fits_at_most(0, []))


def test_what_counts_as_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


PLUGIN = '''
import torch

from benchmark.api import DefendedPipeline, Defense, DefenseKind, DEFENSES


class _Small(DefendedPipeline):
    def generate(self, prompts, latents, **kwargs):
        if latents.shape[0] > 2:  # a card that holds two images at a time
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return super().generate(prompts, latents, **kwargs)


@DEFENSES.register("small-card")
class SmallCard(Defense):
    """The undefended sampler on a simulated card that fits two images per batch."""

    kind = DefenseKind.INFERENCE_TIME

    def apply(self, model, task, artifact_dir):
        return _Small(model, self, task)
'''


def test_a_run_on_a_card_too_small_for_its_batch_finishes_and_records_the_halvings(tmp_path):
    plugin = tmp_path / "small_card.py"
    plugin.write_text(PLUGIN)
    result = run_cli("run", "--model", "tiny-random", "--task", "toy", "--defense", "small-card", "--attack", "none",
                     "--max-prompts", "4", "--max-benign", "3", "--steps", "2", "--batch-size", "8",
                     "--plugin", str(plugin), "--out", str(tmp_path / "runs"))
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and (p / "records.parquet").is_file())
    records = pd.read_parquet(run_dir / "records.parquet")
    small = records[records.defense == "small-card"]
    assert len(small) > 0 and small.image_path.notna().all() and small.score.notna().all()  # nothing lost
    provenance = json.loads((run_dir / "provenance.json").read_text())
    halvings = [e for e in provenance["oom_backoffs"] if "small-card" in e["what"]]
    assert halvings and all(e["to"] == e["from"] // 2 for e in halvings)  # each retry halves the batch
    assert halvings[0]["from"] > 2 and halvings[-1]["to"] <= 2  # down from the asked batch to what fits
    assert "out of memory at batch" in (run_dir / "leaderboard.md").read_text()
    assert "batch halved" in result.stdout + result.stderr
