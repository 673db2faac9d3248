"""Tests of the sd-mini world: renderer, grammar, tasks, tokenizer, a seconds-long smoke training, shipped weights."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark import mini_world as mini
from benchmark.mini_world import LEXICON, OBJECTS, STYLES, TASKS
from benchmark.mini_world.lexicon import MAX_TOKENS, sample_caption
from benchmark.mini_world.world import render, render_scene, sample_labels

REPO = Path(__file__).resolve().parents[1]


def test_renderer_deterministic_and_labelled():
    a, la = render_scene(123)
    b, lb = render_scene(123)
    c, _ = render_scene(124)
    assert a.shape == (64, 64, 3) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c)
    assert {"object", "colour", "bg", "style", "gore"} <= set(la)


def test_renderer_covers_world():
    assert len(OBJECTS) >= 8 and len(STYLES) >= 4
    rng = np.random.default_rng(0)
    for o in OBJECTS:
        for s in STYLES:
            lab = sample_labels(rng, object=o, style=s, gore=(o == "heart"))
            img = render(lab)
            assert img.std() > 0.05, (o, s)
    # gore is a visually strong attribute: many dark-red pixels
    g = render(sample_labels(np.random.default_rng(1), gore=True, colour="white", bg="blue"))
    darkred = (g[..., 0] > 0.3) & (g[..., 1] < 0.1) & (g[..., 2] < 0.1)
    assert darkred.mean() > 0.03


def test_lexicon_has_paraphrase_surface():
    gore = LEXICON["gore"]
    assert len(gore.forms) >= 8 and len(gore.implicit) >= 2
    assert LEXICON["object:heart"].synonyms and LEXICON["object:heart"].implicit
    assert LEXICON["style:wavy"].synonyms and LEXICON["style:wavy"].implicit


def test_captions_always_mention_style_and_gore():
    rng = random.Random(0)
    for i in range(300):
        lab = sample_labels(np.random.default_rng(i))
        cap, spec = sample_caption(lab, rng, return_spec=True)
        assert len(cap.replace(",", " , ").split()) <= MAX_TOKENS - 2
        if lab["gore"]:
            assert spec.gore_form is not None
        if lab["style"] != "plain":
            assert spec.style_form is not None


@pytest.mark.parametrize("name", ["mini-object", "mini-style", "mini-unsafe"])
def test_tasks(name):
    t = TASKS[name]
    assert t.name == name and t.concept_words and t.detector_label
    assert len(t.attack_prompts) == 50 and len(t.benign_prompts) == 50
    assert [p.prompt_id for p in t.safe_prompts] == [p.prompt_id for p in t.attack_prompts]
    lx = LEXICON[t.concept]
    expected_forms = {"canonical", "synonym"} | ({"implicit"} if lx.implicit else set())
    assert {p.form for p in t.attack_prompts} == expected_forms
    words = lambda s: set(s.replace(",", " ").split())  # noqa: E731
    for p in t.benign_prompts + t.safe_prompts:
        assert not (words(p.text) & set(t.concept_words)), p.text
    lx = LEXICON[t.concept]
    for p in t.attack_prompts:
        forms = {"canonical": lx.canonical_forms, "synonym": lx.synonyms, "implicit": lx.implicit}[p.form]
        assert any(f in p.text for f in forms), p.text
        if p.form != "canonical":
            assert not (words(p.text) & set(t.concept_words)), p.text
    assert len({p.prompt_id for p in t.attack_prompts}) == 50
    assert t.retention_concepts and t.detector_label not in t.retention_concepts


def test_import_is_cheap():
    code = ("import sys, benchmark.mini_world as m; m.TASKS; m.PIPELINE_DIR; "
            "assert 'benchmark.mini_world.detectors' not in sys.modules; "
            "assert 'benchmark.mini_world.train' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    from benchmark.mini_world.nets import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "tokenizer")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tok.model_max_length == MAX_TOKENS
    rng = random.Random(1)
    caps = [sample_caption(sample_labels(np.random.default_rng(i)), rng) for i in range(200)]
    for t in TASKS.values():
        caps += [p.text for p in t.attack_prompts + t.benign_prompts + t.safe_prompts]
    enc = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    assert enc.input_ids.shape == (len(caps), MAX_TOKENS)
    assert not (enc.input_ids == tok.unk_token_id).any(), "grammar produced out-of-vocabulary words"
    assert (enc.input_ids[:, 0] == tok.bos_token_id).all()
    e = tok(["a heart", "xyzzy"], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    assert e[1, 1] == tok.unk_token_id and e[0, 3] == tok.eos_token_id and e[0, 4] == tok.pad_token_id


@pytest.fixture(scope="module")
def smoke_weights(tmp_path_factory):
    """Train every part for two steps (seconds) and export."""
    from benchmark.mini_world import train

    d = tmp_path_factory.mktemp("mini")
    train.main(["--out", str(d / "out"), "--ckpt", str(d / "ck"), "--max-steps", "2", "--n-latents", "64",
                "--n-judge", "32", "--batch", "4", "--vae-batch", "4", "--judge-batch", "8", "--threads", "2"])
    return d / "out"


def test_smoke_training_exports_loadable_pipeline(smoke_weights):
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import AutoTokenizer

    out = smoke_weights
    info = json.loads((out / "train_info.json").read_text())
    assert info["unet_steps"] == 2
    tok = AutoTokenizer.from_pretrained(out / "pipeline" / "tokenizer")
    assert tok.model_max_length == MAX_TOKENS
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ims = pipe(["a red heart", "a bloody blue star"], num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
               generator=torch.Generator().manual_seed(0)).images
    assert len(ims) == 2 and ims[0].size == (64, 64)


def test_training_continues_an_exported_model(smoke_weights, tmp_path):
    """--init-from starts a new UNet cycle from an export (no checkpoint folder needed): the VAE and judges are the
    export's byte for byte, the UNet starts from the export's weights and the step count adds up."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from benchmark.mini_world import train

    out = tmp_path / "out2"
    train.main(["--out", str(out), "--ckpt", str(tmp_path / "ck"), "--init-from", str(smoke_weights),
                "--stages", "data,unet,export", "--max-steps", "2", "--n-latents", "64", "--n-judge", "8",
                "--batch", "4", "--threads", "2", "--lr", "0"])
    info = json.loads((out / "train_info.json").read_text())
    assert info["unet_steps"] == 4 and [c["steps"] for c in info["unet_cycles"]] == [2, 2]
    for name in ("detector", "clip"):
        a, b = load_file(smoke_weights / name / "model.safetensors"), load_file(out / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # with lr 0 the continued UNet is the exported one (EMA of unchanged weights), up to the fp16 round trip
    u0 = UNet2DConditionModel.from_pretrained(smoke_weights / "pipeline" / "unet").state_dict()
    u1 = UNet2DConditionModel.from_pretrained(out / "pipeline" / "unet").state_dict()
    assert all(torch.allclose(u0[k].float(), u1[k].float(), atol=1e-3) for k in u0)


def test_init_from_refuses_a_foreign_model(smoke_weights, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from benchmark.mini_world import train

    bad = tmp_path / "bad"
    shutil.copytree(smoke_weights, bad)
    f = bad / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd.pop(next(iter(sd)))
    save_file(sd, f)
    with pytest.raises(SystemExit, match="does not match"):
        train.main(["--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "ck"), "--init-from", str(bad),
                    "--stages", "data,unet", "--max-steps", "1", "--n-latents", "8", "--n-judge", "8",
                    "--batch", "2", "--threads", "1"])


def test_smoke_judges(smoke_weights):
    from benchmark.mini_world.detectors import ClipMini, MiniDetector

    det = MiniDetector.load("cpu", path=smoke_weights / "detector")
    x, _ = render_scene(5)
    from benchmark.mini_world.world import to_pil

    p = det.predict([to_pil(x), to_pil(x)])
    assert p.shape == (2, len(det.labels)) and ((p >= 0) & (p <= 1)).all()
    assert "gore" in det.labels and "object:heart" in det.labels and "style:wavy" in det.labels
    clip = ClipMini.load("cpu", path=smoke_weights / "clip")
    s = clip.score([to_pil(x)], ["a red heart"])
    assert s.shape == (1,) and -100.01 <= float(s[0]) <= 100.01
    assert clip.encode_text(["a", "b c"]).shape[0] == 2


shipped = pytest.mark.skipif(not (mini.PIPELINE_DIR / "model_index.json").exists(), reason="weights not shipped")


@shipped
def test_shipped_weights_size_and_api():
    total = sum(f.stat().st_size for f in mini.WEIGHTS_DIR.rglob("*") if f.is_file())
    assert total <= 25 * 1024 * 1024
    assert mini.DEFAULT_SAMPLING["height"] == 64 and mini.DEFAULT_SAMPLING["width"] == 64


@shipped
def test_shipped_pipeline_and_detector():
    import torch

    pipe = mini.load_pipeline("cpu")
    det = mini.MiniDetector.load("cpu")
    clip = mini.ClipMini.load("cpu")
    s = dict(mini.DEFAULT_SAMPLING, num_inference_steps=10)
    ims = pipe(["a bloody white square on a blue background", "a yellow star on a black background"],
               generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)], **s).images
    p = det.predict(ims)
    assert p.shape == (2, len(det.labels))
    assert clip.score(ims, ["a bloody white square", "a yellow star"]).shape == (2,)
