"""The attack stage's contract, on the tiny random model (plumbing, not quality): embedding outputs are
sampled exactly like the text they encode, a crash fails its cell (never a score) and is not cached,
declared per-prompt failures are counted, long prompts are truncated and counted."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmark.api.attack import Attack, AttackOutput, ThreatModel
from benchmark.api.errors import RunFailedError
from benchmark.api.registry import ATTACKS
from benchmark.harness.config import RunConfig, SamplerConfig
from benchmark.harness.runner import execute


@ATTACKS.register("test-embeds")
class EmbedsAttack(Attack):
    """Returns the base text encoder's embedding of the prompt itself (an embedding-space no-op)."""

    threat_model = ThreatModel.TEXT_ENCODER

    def run(self, prompts, ctx):
        pipe = ctx.model.pipe
        outputs = []
        for prompt in prompts:
            embeds, _ = pipe.encode_prompt(prompt.text, pipe.device, 1, False)
            outputs.append(AttackOutput(prompt.id, None, embeds=embeds[0], queries=1))
        return outputs


class Boom(RuntimeError):
    pass


CALLS = {"n": 0}


@ATTACKS.register("test-crash")
class CrashingAttack(Attack):
    """Raises on every call."""

    def run(self, prompts, ctx):
        CALLS["n"] += 1
        raise Boom("attack exploded")


@ATTACKS.register("test-partial")
class PartialAttack(Attack):
    """Fails on every other prompt, on purpose."""

    failures = {"no-optimum": "the optimisation found nothing"}

    def run(self, prompts, ctx):
        return [AttackOutput(p.id, p.text + " adv") if i % 2 == 0 else
                AttackOutput(p.id, None, status="failed", reason="no-optimum", message="could not optimise")
                for i, p in enumerate(prompts)]


def _config(tmp_path, attacks, **kwargs) -> RunConfig:
    return RunConfig(model="tiny-random", tasks=["toy"], defenses=["none", "negative-prompt"], attacks=attacks,
                     max_prompts=4, max_benign=1, sampler=SamplerConfig(num_inference_steps=2, batch_size=4),
                     out=str(tmp_path), **kwargs)


def test_embedding_output_gives_the_same_images_as_its_text(tmp_path):
    summary = execute(_config(tmp_path, ["test-embeds"]))
    records = pd.read_parquet(summary.run_dir / "records.parquet")
    concept = records[(records["judge_role"] == "concept") & (records["role"] == "attack")]
    for defense in ("none", "negative-prompt"):
        mine = concept[concept["defense"] == defense].set_index(["attack", "prompt_id"])
        text_scores = mine.loc["none", "score"].sort_index()
        embed_scores = mine.loc["test-embeds", "score"].sort_index()
        assert mine.loc["test-embeds", "adversarial_prompt"].isna().all()
        assert (mine.loc["test-embeds", "image_path"] != mine.loc["none", "image_path"]).all()
        pd.testing.assert_series_equal(text_scores, embed_scores, atol=1e-3, check_names=False)
    import numpy as np
    from PIL import Image

    row = concept[(concept["defense"] == "none")].set_index(["attack", "prompt_id"])
    a = np.asarray(Image.open(tmp_path / row.loc[("none", row.index[0][1]), "image_path"]), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / row.loc[("test-embeds", row.index[0][1]), "image_path"]), dtype=np.int16)
    assert np.abs(a - b).max() <= 1
    assert (records.loc[records["attack"] == "test-embeds", "attack_queries"] == 1).all()


def test_crashing_attack_fails_its_cell_and_is_retried(tmp_path):
    with pytest.raises(RunFailedError) as info:
        execute(_config(tmp_path, ["none", "test-crash"]))
    summary = info.value.summary
    assert [f.attack for f in summary.failures] == ["test-crash", "test-crash"]
    board = summary.leaderboard
    asr = board[(board["attack"] == "test-crash") & (board["metric"] == "asr")]
    assert (asr["n"] == 4).all() and asr["value"].isna().all() and (asr["status"] == "failed").all()
    worst = board[board["metric"] == "worst_case_asr"]
    assert (worst["status"] == "failed").all() and worst["value"].isna().all()
    kept = board[(board["attack"] == "none") & (board["metric"] == "asr")]
    assert (kept["status"] == "ok").all() and kept["value"].notna().all()
    records = pd.read_parquet(summary.run_dir / "records.parquet")
    crashed = records[records["attack"] == "test-crash"]
    assert (crashed["attack_status"] == "error").all() and crashed["score"].isna().all()
    assert crashed["image_path"].isna().all() and crashed["attack_message"].str.contains("attack exploded").all()
    before = CALLS["n"]
    with pytest.raises(RunFailedError):
        execute(_config(tmp_path, ["none", "test-crash"]))
    assert CALLS["n"] > before  # not cached: a rerun tries again


def test_partial_failures_stay_in_n(tmp_path):
    summary = execute(_config(tmp_path, ["test-partial"]))
    board = summary.leaderboard
    row = board[(board["attack"] == "test-partial") & (board["metric"] == "attack_failures")
                & (board["defense"] == "none")].iloc[0]
    assert row["value"] == 2 and row["n"] == 4
    assert "2 of 4 prompts could not be processed by attack 'test-partial'" in summary.markdown
    records = pd.read_parquet(summary.run_dir / "records.parquet")
    failed = records[(records["attack"] == "test-partial") & (records["attack_status"] == "failed")]
    assert failed["attack_message"].str.startswith("no-optimum: could not optimise").all()


def test_long_prompts_are_truncated_and_counted(tmp_path):
    prompts = tmp_path / "long.txt"
    prompts.write_text("a church " * 30 + "\nshort prompt\n")
    summary = execute(_config(tmp_path, ["none"], prompts=str(prompts)))
    records = pd.read_parquet(summary.run_dir / "records.parquet")
    attack = records[records["role"] == "attack"].drop_duplicates(["defense", "prompt_id"])
    assert attack["truncated"].sum() == 2  # the long prompt, under both defenses
    board = summary.leaderboard
    truncated = board[(board["metric"] == "truncated_prompts") & (board["defense"] == "none")].iloc[0]
    assert truncated["value"] == 1 and truncated["n"] == 2


def test_whitebox_attack_skipped_against_non_differentiable_defense(tmp_path):
    from benchmark.api.defense import DefendedPipeline, Defense, DefenseKind
    from benchmark.api.registry import DEFENSES

    @DEFENSES.register("test-hard-filter")
    class HardFilter(Defense):
        """Non-differentiable defense for the test."""

        kind = DefenseKind.FILTER
        differentiable = False

        def apply(self, model, task, artifact_dir):
            return DefendedPipeline(model, self, task)

    @ATTACKS.register("test-whitebox")
    class WhiteBox(Attack):
        """White-box attack stub returning the prompts unchanged."""

        threat_model = ThreatModel.WHITE_BOX

        def run(self, prompts, ctx):
            return [AttackOutput(p.id, p.text) for p in prompts]

    config = _config(tmp_path, ["test-whitebox"])
    config.defenses = ["test-hard-filter"]
    summary = execute(config)
    assert any("test-whitebox skipped against test-hard-filter" in n for n in summary.notes)
    records = pd.read_parquet(summary.run_dir / "records.parquet")
    assert set(records.loc[records["defense"] == "none", "attack"]) == {"none", "test-whitebox"}
    assert set(records.loc[records["defense"] == "test-hard-filter", "attack"]) == {"none"}


def test_attack_results_are_typed_and_their_cells_keep_their_json():
    """The stage hands on an :class:`AttackResult`; the cell it stores is the JSON the dict-shaped records had
    (same keys, same values), and a stored cell without the newer ``reason`` key still reads."""
    from benchmark.api.prompt import Prompt
    from benchmark.harness.stages.attack import AttackResult, _result, error_record

    output = AttackOutput("p1", "a sly prompt", status="failed", reason="no_token_budget", message="too long",
                          seconds=2, queries=3, meta={"k": [1, 2]})
    stored = _result(output, None).to_json()
    assert stored == {"prompt_id": "p1", "text": "a sly prompt", "status": "failed", "reason": "no_token_budget",
                      "message": "too long", "seconds": 2.0, "queries": 3, "embeds_path": None, "meta": {"k": [1, 2]}}
    assert isinstance(stored["seconds"], float) and AttackResult.from_json(stored).to_json() == stored
    assert AttackResult.from_json(stored).attack_message() == "no_token_budget: too long"
    older = {k: v for k, v in stored.items() if k != "reason"} | {"status": "ok"}
    assert AttackResult.from_json(older).attack_message() == "too long"
    assert error_record("p2", "Boom: x").attack_message() == "Boom: x"
    plain = AttackResult.unchanged(Prompt(id="b1", text="a cat"))
    assert (plain.status, plain.text, plain.seconds, plain.queries, plain.attack_message()) == ("ok", "a cat", 0.0, 0, "")
