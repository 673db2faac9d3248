"""Half precision (issue 14): ``--dtype bf16`` samples in bf16, attacks keep what they optimise in fp32, judges
run in fp32, and bf16 cells never share a key with fp32 cells.

On the CPU in bf16, on the trained sd-mini world (its shipped SafeRedir and its detector are the real thing):

* one CLI run of every inference-time and filter defense the registry lists (new ones join by themselves),
  plus the sampling path of two weight edits (UCE in closed form, ESD-x at two iterations), at tiny budgets;
* one fp32 CLI run into the same store: its images are new cells, not the bf16 ones reused;
* one in-process bf16 run of a white-box attack (UnlearnDiff, one iteration) against the undefended model and
  SafeRedir (fp32 classifier on bf16 latents), spying on what the attack optimises and on the judges.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from benchmark.api.defense import DefenseKind
from benchmark.api.registry import DEFENSES, JUDGES, TASKS
from benchmark.mini_world import PIPELINE_DIR
from conftest import run_cli


def _bf16_attention_refused() -> str:
    """Why this process cannot run bf16 attention, or "". With kernels forced below the CPU's
    (``ATEN_CPU_CAPABILITY=avx2`` or ``default`` on an AVX-512 BF16 machine), torch's flash attention picks its
    VNNI packing from the hardware but dispatches the packing kernel by the forced level, and refuses
    ("pack_vnni2 is only supported when avx512 is supported"); a real AVX2 CPU takes the unpacked path."""
    sequence = torch.randn(1, 1, 64, 32, dtype=torch.bfloat16)
    try:
        torch.nn.functional.scaled_dot_product_attention(sequence, sequence, sequence)
    except RuntimeError as error:
        return f"bf16 attention refused under ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')}: {error}"
    return ""


pytestmark = pytest.mark.skipif(not (PIPELINE_DIR / "model_index.json").is_file(),
                                reason="sd-mini weights are not in this checkout")
needs_bf16_attention = pytest.mark.skipif(bool(_bf16_attention_refused()), reason=_bf16_attention_refused() or "-")

MODEL, TASK = "sd-mini", "mini-unsafe"
WEIGHT_EDITS = ["uce", "esd-x"]  # the cheap ones: their sampling path is the base pipeline with edited weights
BUDGET = ["--model", MODEL, "--task", TASK, "--attack", "none", "--max-prompts", "2", "--max-benign", "1",
          "--steps", "2", "--device", "cpu"]
OPTIONS = ["--option", "defense:sld.preset=max",  # no warm-up: safety guidance acts from step 0 of 2
           "--option", "defense:esd-x.iterations=2", "--option", "defense:esd-x.ddim_steps=2"]


def inference_time_defenses() -> list[str]:
    """Every registered inference-time or filter defense that runs on sd-mini without user data."""
    names = []
    for name in DEFENSES.builtin_names():  # not the probes other tests register in this process
        cls = DEFENSES.get(name)
        if cls.kind in (DefenseKind.INFERENCE_TIME, DefenseKind.FILTER) and cls.runs_without_options \
                and cls().supports(MODEL):
            names.append(name)
    return names


def _run_dir(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def _sidecar(out: Path, image_path: str) -> dict:
    return json.loads((out / image_path).with_suffix(".json").read_text())


def _pixels(out: Path, image_path: str) -> np.ndarray:
    with Image.open(out / image_path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def _images(out: Path, records: pd.DataFrame) -> pd.DataFrame:
    """One row per generated image of the records (they hold one row per judge)."""
    return records.drop_duplicates("image_path").dropna(subset=["image_path"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16")
    defenses = inference_time_defenses()
    result = run_cli("run", *BUDGET, "--defense", ",".join(defenses + WEIGHT_EDITS), "--dtype", "bf16",
                     *OPTIONS, "--out", str(out))
    return out, _run_dir(result), defenses, result


def test_registry_lists_the_inference_time_defenses():
    assert {"negative-prompt", "sld", "safree", "saferedir", "filter", "keyword-filter"} <= set(
        inference_time_defenses())


@needs_bf16_attention
def test_every_inference_time_defense_samples_in_bf16(bf16_run):
    out, run_dir, defenses, result = bf16_run
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["dtype"] == "bf16"
    records = pd.read_parquet(run_dir / "records.parquet")
    assert set(records["defense"]) == {"none", *defenses, *WEIGHT_EDITS}
    assert (records["attack_status"] == "ok").all()
    images = _images(out, records)
    # every image was drawn by a bf16 pipeline (the generate sidecar records the UNet's dtype)
    assert {_sidecar(out, p)["dtype"] for p in images["image_path"]} == {"bf16"}
    # NaN latents decode to flat frames (numpy warns when casting NaN to uint8): no image of the run is one,
    # except the black frames of blocked prompts
    assert "invalid value encountered" not in result.stderr
    drawn = {}
    for row in images.itertuples():
        pixels = _pixels(out, row.image_path)
        assert np.isfinite(pixels).all()
        if not (row.defense == "keyword-filter" and row.blocked):
            assert pixels.std() > 1.0, f"{row.defense}/{row.prompt_id}: a flat image"
        drawn[(row.defense, row.prompt_id)] = pixels
    for defense in {"none", *defenses, *WEIGHT_EDITS} - {"keyword-filter"}:
        own = [v for (d, _), v in drawn.items() if d == defense]
        assert len(own) == 3 and any(not np.array_equal(own[0], v) for v in own[1:]), defense
    # the defenses acted in bf16: SLD's safety guidance and SAFREE's projection changed images, the switches
    # of SAFREE and SafeRedir were decided (recorded per image), the filters blocked something
    prompts = sorted({p for _, p in drawn})
    for defense in ("sld", "safree", "negative-prompt"):
        assert any(not np.array_equal(drawn[(defense, p)], drawn[("none", p)]) for p in prompts), defense
    for defense in ("safree", "saferedir"):
        assert images[images["defense"] == defense]["defense_triggered"].notna().all(), defense
    assert images[images["defense"] == "keyword-filter"]["blocked"].any()


@needs_bf16_attention
def test_fp32_run_does_not_reuse_bf16_images(bf16_run):
    out, run_dir, _, _ = bf16_run
    result = run_cli("run", *BUDGET, "--defense", "keyword-filter", "--dtype", "fp32", *OPTIONS, "--out", str(out))
    fp32_dir = _run_dir(result)
    assert fp32_dir != run_dir
    assert yaml.safe_load((fp32_dir / "config.yaml").read_text())["dtype"] == "fp32"
    assert "generate: 6 computed, 0 cached" in result.stdout
    # prepared defenses are per dtype too (a teacher sampled in bf16 trains another artifact)
    assert "prepare: 2 computed, 0 cached" in result.stdout
    assert json.loads((fp32_dir / "provenance.json").read_text())["dtype"] == "fp32"
    assert json.loads((run_dir / "provenance.json").read_text())["dtype"] == "bf16"
    bf16 = _images(out, pd.read_parquet(run_dir / "records.parquet"))
    fp32 = _images(out, pd.read_parquet(fp32_dir / "records.parquet"))
    pairs = fp32.merge(bf16, on=["defense", "role", "prompt_id", "seed"], suffixes=("_32", "_16"))
    assert len(pairs) == 6
    assert not set(pairs["image_path_32"]) & set(pairs["image_path_16"])  # other generate keys
    assert {_sidecar(out, p)["dtype"] for p in pairs["image_path_32"]} == {"fp32"}
    # the same images up to bf16 rounding (not noise): the undefended model, pixel values 0..255
    for row in pairs[pairs["defense"] == "none"].itertuples():
        gap = np.abs(_pixels(out, row.image_path_32) - _pixels(out, row.image_path_16)).mean()
        assert gap < 10.0, (row.prompt_id, gap)


def test_model_key_names_the_dtype_except_fp32():
    """Every key computed from the model (prepare, attack, generate, in-process caches) follows its key."""
    from benchmark.api.model import keyed_by_dtype
    from benchmark.models.tiny_random import TinyRandomModel

    fp32 = TinyRandomModel().load(torch.device("cpu"), torch.float32)
    bf16 = TinyRandomModel().load(torch.device("cpu"), torch.bfloat16)
    assert keyed_by_dtype(fp32).key == fp32.key  # existing fp32 stores stay valid
    assert keyed_by_dtype(bf16).key != bf16.key and keyed_by_dtype(bf16).key != keyed_by_dtype(fp32).key


def _modules(obj, depth: int = 3):
    """The torch modules an object holds (its attributes, their attributes, ...)."""
    if isinstance(obj, torch.nn.Module):
        yield obj
        return
    if depth == 0 or not hasattr(obj, "__dict__"):
        return
    for value in vars(obj).values():
        yield from _modules(value, depth - 1)


@needs_bf16_attention
def test_white_box_attack_optimises_in_fp32_and_judges_run_in_fp32(tmp_path, monkeypatch):
    import attacks.unlearndiff as unlearndiff
    from benchmark.harness.config import RunConfig, SamplerConfig
    from benchmark.harness.runner import execute

    # the attack's targets are cached per loaded model (attacks._token_search): the run's bf16 model starts empty
    optimised = []
    attack_batch = unlearndiff.UnlearnDiff._attack_batch

    def spy_attack(self, ctx, states, budget):
        assert ctx.defended.pipe.unet.dtype == torch.bfloat16  # the attacked sampler is the bf16 one
        attack_batch(self, ctx, states, budget)
        optimised.extend(st.z for st in states)

    monkeypatch.setattr(unlearndiff.UnlearnDiff, "_attack_batch", spy_attack)
    judged = []
    task = TASKS.get(TASK)
    for name in {task.judge.name, task.utility_judge.name}:
        cls = JUDGES.get(name)
        score = cls.score

        def spy_score(self, images, prompts, score=score):
            judged.append((self.name, {p.dtype for m in _modules(self) for p in m.parameters()},
                           {type(i) for i in images}))
            return score(self, images, prompts)

        monkeypatch.setattr(cls, "score", spy_score)

    config = RunConfig(model=MODEL, tasks=[TASK], defenses=["none", "saferedir"], attacks=["unlearndiff"],
                       max_prompts=1, max_benign=1, device="cpu", dtype="bf16",
                       sampler=SamplerConfig(num_inference_steps=2),
                       attack_options={"unlearndiff": {"iterations": 1, "check_source": False}},
                       out=str(tmp_path))
    summary = execute(config)

    # what UnlearnDiff optimises (its relaxed one-hot) is fp32 with a finite, non-zero fp32 gradient that came
    # back through the bf16 UNet (and through SafeRedir's fp32 classifier on bf16 latents)
    assert len(optimised) == 2
    for z in optimised:
        assert z.dtype == torch.float32 and z.grad is not None and z.grad.dtype == torch.float32
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    records = pd.read_parquet(summary.run_dir / "records.parquet")
    attacked = records[records["attack"] == "unlearndiff"]
    assert set(attacked["defense"]) == {"none", "saferedir"} and (attacked["attack_status"] == "ok").all()
    assert (attacked["adversarial_prompt"] != attacked["source_prompt"]).all()  # the tokens were prepended
    assert {_sidecar(tmp_path, p)["dtype"] for p in records["image_path"].dropna()} == {"bf16"}
    # both judges scored (the attack's checks and the judge stage), always fp32 weights on decoded images
    assert {name for name, _, _ in judged} == {task.judge.name, task.utility_judge.name}
    for name, dtypes, inputs in judged:
        assert dtypes == {torch.float32}, name
        assert inputs == {Image.Image}, name
