"""Exports of a run's adversarial prompts, their replay (``prompt-set``) and the transfer matrix.

The round trip (``slow``: a source run and four replay runs) runs on the tiny random model (plumbing, not
quality): an export replayed on the defense it came from samples the same images as the source run, for
text rows (the very same image cell: same text, seed and guidance) and for embedding rows (the same
tensor, redrawn: pixel-equal up to 1/255). The matrix is checked against hand-computed Wilson intervals
on a crafted records frame.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.api.attack import Attack, AttackOutput, ThreatModel
from benchmark.api.errors import ConfigError, PathEscapeError
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS
from benchmark.cli import main
from benchmark.harness.config import RunConfig, SamplerConfig
from benchmark.harness.runner import execute
from benchmark.harness.transfer import embeds_locator, run_transfer
from benchmark.hashing import stable_hash
from benchmark.records import COLUMNS, records_frame
from prompts import load_unlearndiff
from reports.export import EXPORT_COLUMNS, ExportError, export_run
from reports.transfer import Replay, render_markdown, transfer_matrix


@ATTACKS.register("test-export-text")
class SuffixAttack(Attack):
    """Appends a word; fails (declared) on the prompt with id 1."""

    failures = {"skipped": "the test skips this prompt"}

    def run(self, prompts, ctx):
        return [AttackOutput(p.id, None, status="failed", reason="skipped", message="on purpose") if p.id == "1"
                else AttackOutput(p.id, f"{p.text} vivid", seconds=0.5, queries=3) for p in prompts]


@ATTACKS.register("test-export-embeds")
class ScaledEmbedsAttack(Attack):
    """The base text encoder's embedding of the prompt, scaled (an embedding no text encodes)."""

    threat_model = ThreatModel.TEXT_ENCODER

    def run(self, prompts, ctx):
        pipe = ctx.model.pipe
        outputs = []
        for prompt in prompts:
            embeds, _ = pipe.encode_prompt(prompt.text, pipe.device, 1, False)
            outputs.append(AttackOutput(prompt.id, None, embeds=1.5 * embeds[0], queries=1))
        return outputs


DEFENSES = ["none", "negative-prompt"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store")
    config = RunConfig(model="tiny-random", tasks=["toy"], defenses=DEFENSES,
                       attacks=["test-export-text", "test-export-embeds"], max_prompts=2, max_benign=0,
                       sampler=SamplerConfig(num_inference_steps=2, batch_size=4), out=str(out))
    return execute(config).run_dir


@pytest.fixture(scope="module")
def transfer(source, tmp_path_factory):
    return run_transfer(source, tmp_path_factory.mktemp("transfer"), plots=True)


def concept(records: pd.DataFrame) -> pd.DataFrame:
    return records[(records["judge_role"] == "concept") & (records["role"] == "attack")]


def pixels(store: Path, relpath: str) -> np.ndarray:
    with Image.open(store / relpath) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_export_writes_the_unlearndiff_layout_and_reads_back(source, tmp_path):
    exported = export_run(source, tmp_path / "x.csv", defenses=["negative-prompt"], attacks=["test-export-text"])
    assert [(e.defense, e.attack, e.rows, e.failed, e.embeddings) for e in exported] == [
        ("negative-prompt", "test-export-text", 2, 1, 0)]
    table = pd.read_csv(tmp_path / "x.csv", dtype={"case_number": str})
    assert list(table.columns) == EXPORT_COLUMNS
    records = concept(pd.read_parquet(source / "records.parquet")).set_index(["defense", "attack", "prompt_id"])
    prompts = {p.id: p for p in load_unlearndiff(tmp_path / "x.csv")}  # the existing loader reads it
    assert sorted(prompts) == ["0", "1"]
    for pid, prompt in prompts.items():
        row = records.loc[("negative-prompt", "test-export-text", pid)]
        assert prompt.seed == row["seed"] and prompt.guidance == pytest.approx(row["guidance_scale"])
        if pid == "1":  # failed at the source: the source prompt, marked
            assert prompt.text == row["source_prompt"] and prompt.meta["attack_status"] == "failed"
        else:
            assert prompt.text == row["adversarial_prompt"] == row["source_prompt"] + " vivid"
            assert int(prompt.meta["attack_queries"]) == 3 and float(prompt.meta["attack_seconds"]) == pytest.approx(0.5)
        assert prompt.meta["source_defense"] == "negative-prompt" and prompt.meta["source_run"] == source.name
        assert prompt.meta["flagged"] == str(bool(row["flagged"]))  # the loader keeps extra columns as text


def test_embedding_rows_go_to_a_safetensors_file_beside_the_csv(source, tmp_path):
    from safetensors.torch import load_file

    (exported,) = export_run(source, tmp_path / "e.csv", defenses=["none"], attacks=["test-export-embeds"],
                             locate=embeds_locator(source))
    assert exported.embeddings == 2 and exported.files[1] == tmp_path / "e.embeds.safetensors"
    table = pd.read_csv(tmp_path / "e.csv", dtype={"case_number": str, "embeds_key": str})
    assert (table["embeds_file"] == "e.embeds.safetensors").all() and (table["embeds_key"] == table["case_number"]).all()
    assert (table["prompt"] == table["source_prompt"]).all()  # the format needs a text; the tensor is the prompt
    tensors = load_file(str(tmp_path / "e.embeds.safetensors"))
    assert sorted(tensors) == ["0", "1"] and tensors["0"].ndim == 2


@pytest.mark.numeric
@pytest.mark.slow  # two tiny runs and four replays: ~1 min on 2 idle cores
def test_replay_reproduces_the_source_images_text_and_embeddings(source, transfer):
    store = source.parent
    original = concept(pd.read_parquet(source / "records.parquet")).set_index(["defense", "attack", "prompt_id"])
    assert len(transfer.replay_runs) == 4 and not transfer.failures
    checked = {"text": 0, "embeds": 0}
    for export, run in zip(transfer.exports, transfer.replay_runs, strict=True):
        replay = concept(pd.read_parquet(run / "records.parquet"))
        replay = replay[replay["attack"] == "prompt-set"]
        source_defense, attack = export.defense, export.attack
        own = replay[replay["defense"] == source_defense]
        assert len(own) == 2
        for row in own.itertuples():
            before = original.loc[(source_defense, attack, row.prompt_id)]
            assert (row.seed, row.guidance_scale) == (before["seed"], before["guidance_scale"])
            if before["attack_status"] == "failed":
                assert row.attack_status == "failed" and row.attack_message.startswith("failed-at-source")
                continue
            if attack.endswith("text"):
                assert row.adversarial_prompt == before["adversarial_prompt"]
                assert row.image_path == before["image_path"]  # the same image cell: same text, seed, guidance
                checked["text"] += 1
            else:
                assert pd.isna(row.adversarial_prompt) and row.image_path != before["image_path"]  # redrawn
                diff = np.abs(pixels(store, row.image_path) - pixels(store, before["image_path"]))
                assert diff.max() <= 1, f"prompt {row.prompt_id}: the replayed embedding drew another image"
                checked["embeds"] += 1
            assert row.flagged == before["flagged"]
    assert checked == {"text": 2, "embeds": 4}


@pytest.mark.slow  # two tiny runs and four replays: ~1 min on 2 idle cores
def test_transfer_command_writes_the_matrix(source, transfer):
    matrix = transfer.matrix
    assert set(matrix["kind"]) == {"original", "transfer", "replay"}
    # Every row of the matrix has the source's n (failed-at-source prompts count as not broken).
    assert (matrix["n"] == 2).all()
    # The round trip on the source defense gives the source's ASR.
    for (defense, _attack), part in matrix.groupby(["source_defense", "attack"]):
        mine = part.set_index(["target_defense", "kind"])
        assert mine.loc[(defense, "replay"), "asr"] == pytest.approx(mine.loc[(defense, "original"), "asr"])
    names = {p.name for p in transfer.files}
    assert {"transfer.csv", "transfer.md", "transfer_toy_test-export-text.png"} <= names
    assert "found against \\ replayed on" in (transfer.files[1]).read_text()


def test_exports_refuse_paths_out_of_the_store(source, tmp_path):
    copy = tmp_path / "store" / source.name
    shutil.copytree(source, copy)
    records = pd.read_parquet(copy / "records.parquet")
    records.loc[records.index[0], "image_path"] = "../../etc/passwd"
    records.to_parquet(copy / "records.parquet")
    with pytest.raises(PathEscapeError, match="contains '..'"):
        export_run(copy, tmp_path / "out.csv", defenses=["none"], attacks=["test-export-text"])
    records.loc[records.index[0], "image_path"] = "/etc/passwd"
    records.to_parquet(copy / "records.parquet")
    with pytest.raises(PathEscapeError, match="absolute"):
        export_run(copy, tmp_path / "out.csv", defenses=["none"], attacks=["test-export-text"])


def test_a_stored_embeds_path_out_of_the_store_is_refused(source, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(source.parent, store)
    for sidecar in (store / "cells" / "attack").glob("*/*.json"):
        if sidecar.with_suffix(".safetensors").is_file():
            record = json.loads(sidecar.read_text())
            record["embeds_path"] = "/etc/passwd"
            sidecar.write_text(json.dumps(record))
    with pytest.raises(PathEscapeError, match="absolute"):
        export_run(store / source.name, tmp_path / "e.csv", defenses=["none"], attacks=["test-export-embeds"],
                   locate=embeds_locator(store / source.name))


def test_replay_refuses_an_embeds_file_out_of_its_folder(tmp_path):
    from attacks.prompt_set import embeds_file

    (tmp_path / "x.csv").write_text("case_number,prompt\n0,a\n")
    for bad in ("../e.safetensors", "/etc/passwd", "sub/e.safetensors", ".."):
        with pytest.raises(PathEscapeError):
            embeds_file(tmp_path / "x.csv", bad)


def test_replay_of_an_export_with_other_seeds_fails_saying_what_to_pass():
    from attacks.prompt_set import check_settings

    task_prompt = Prompt("3", "a cat", seed=7)
    exported = Prompt("3", "a cat vivid", seed=8, guidance=5.0, meta={"source_run": "r"})
    with pytest.raises(ConfigError, match="--prompt-column source_prompt"):
        check_settings(task_prompt, exported, {"seed": 0, "guidance_scale": 5.0}, "x.csv")
    check_settings(task_prompt, Prompt("3", "t", seed=7, guidance=5.0, meta={"source_run": "r"}),
                   {"seed": 0, "guidance_scale": 5.0}, "x.csv")  # agrees: no error
    check_settings(task_prompt, Prompt("3", "t", seed=8), {"seed": 0, "guidance_scale": 5.0}, "x.csv")  # not an export


def test_an_export_with_embeddings_enters_the_replay_cell_key(source, tmp_path):
    export_run(source, tmp_path / "e.csv", defenses=["none"], attacks=["test-export-embeds"],
               locate=embeds_locator(source))
    before = stable_hash(ATTACKS.get("prompt-set")(file=str(tmp_path / "e.csv")).config())
    (tmp_path / "e.embeds.safetensors").write_bytes((tmp_path / "e.embeds.safetensors").read_bytes() + b" ")
    after = stable_hash(ATTACKS.get("prompt-set")(file=str(tmp_path / "e.csv")).config())
    assert before != after


def test_cli_export_one_file_per_cell_or_says_to_pick(source, tmp_path, capsys):
    assert main(["export", str(source), "-o", str(tmp_path / "all.csv")]) == 2
    assert "pick one with --task/--defense/--attack" in capsys.readouterr().err
    assert main(["export", str(source), "-o", str(tmp_path / "folder"), "--attack", "test-export-text"]) == 0
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == [
        "toy__negative-prompt__test-export-text.csv", "toy__none__test-export-text.csv"]
    assert main(["export", str(source), "-o", str(tmp_path / "x.csv"), "--defense", "uce"]) == 2
    assert "not in this run" in capsys.readouterr().err


def test_hf_format(source, tmp_path):
    try:
        import datasets
    except ImportError:
        with pytest.raises(ExportError, match="pip install"):
            export_run(source, tmp_path / "hf", defenses=["none"], attacks=["test-export-text"], fmt="hf")
        pytest.skip("datasets (the 'hub' extra) is not installed: only its error message was checked")
    export_run(source, tmp_path / "hf", defenses=["none"], attacks=["test-export-text"], fmt="hf")
    loaded = datasets.load_from_disk(str(tmp_path / "hf" / "data"))
    assert loaded.column_names == EXPORT_COLUMNS and len(loaded) == 2


# --- the matrix on a crafted frame -----------------------------------------------------------------------------

TEMPLATE = {name: None for name in COLUMNS} | {
    "run_id": "r", "model": "m", "model_key": "k", "task": "t", "defense_key": "dk", "role": "attack",
    "prompt_set": "s", "source_prompt": "p", "truncated": False, "attack_status": "ok", "attack_message": "",
    "attack_seconds": 0.0, "attack_queries": 0, "seed": 0, "image_index": 0, "guidance_scale": 5.0,
    "num_inference_steps": 2, "height": 8, "width": 8, "blocked": False, "judge": "j", "judge_version": "1",
    "judge_preset": "x", "judge_threshold": 0.5, "judge_weights_hash": "h", "judge_role": "concept", "score": 0.0}


def crafted(run_id: str, attack: str, outcomes: dict[str, list[object]]) -> pd.DataFrame:
    """defense -> per prompt: True/False flagged, "failed" (declared failure), "error" (the cell raised)."""
    rows = []
    for defense, per_prompt in outcomes.items():
        for pid, outcome in enumerate(per_prompt):
            status = outcome if outcome in ("failed", "error") else "ok"
            rows.append(TEMPLATE | {"run_id": run_id, "defense": defense, "attack": attack, "prompt_id": str(pid),
                                    "attack_status": status, "flagged": None if status == "error" else outcome is True})
    return records_frame(rows)


def test_transfer_matrix_on_a_crafted_frame_gives_the_hand_computed_numbers():
    source = crafted("src", "x", {"A": [True, True, False, False], "B": [True, False, False, False]})
    from_a = crafted("ra", "prompt-set", {"A": [True, True, False, False], "B": [True, "failed", False, False]})
    from_b = crafted("rb", "prompt-set", {"A": [True, True, True, True], "B": ["error"] * 4})
    matrix = transfer_matrix(source, [Replay("t", "A", "x", from_a), Replay("t", "B", "x", from_b)])
    cell = matrix.set_index(["source_defense", "target_defense", "kind"])
    # 2/4: Wilson 95% [0.1500, 0.8500]; 1/4: [0.0456, 0.6994]; 4/4: [0.5101, 1] (by hand, z = 1.95996)
    expected = {("A", "A", "original"): (0.5, 0.15004, 0.84996), ("A", "A", "replay"): (0.5, 0.15004, 0.84996),
                ("A", "B", "transfer"): (0.25, 0.04558, 0.69936), ("B", "B", "original"): (0.25, 0.04558, 0.69936),
                ("B", "A", "transfer"): (1.0, 0.51010, 1.0)}
    for key, (asr, low, high) in expected.items():
        row = cell.loc[key]
        assert (row["asr"], row["ci_low"], row["ci_high"]) == pytest.approx((asr, low, high), abs=1e-4), key
        assert row["n"] == 4 and row["status"] == "ok"
    failed = cell.loc[("B", "B", "replay")]  # the replay raised: failed, never a number
    assert failed["status"] == "failed" and math.isnan(failed["asr"])
    markdown = render_markdown(matrix)
    assert "| A | **50% [15, 85]** | 25% [5, 70] |" in markdown
    assert "| B | 100% [51, 100] | **25% [5, 70]** |" in markdown
