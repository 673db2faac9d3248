"""The token helpers that Ring-A-Bell and UnlearnDiff build on must reproduce the pipeline's own prompt
encoding; otherwise the attacks optimise a prompt the generate stage never sees. Random weights (tiny-random):
these tests check consistency, not quality."""

import pytest
import torch

from attacks import _text
from benchmark.models.tiny_random import TinyRandomModel
from conftest import assert_close_fp


@pytest.fixture(scope="module")
def pipe():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32).pipe


def test_layout_is_the_pipeline_tokenization(pipe):
    tok = pipe.tokenizer
    text = "a church on a hill"
    ids, cut = _text.layout(tok, _text.content_ids(tok, text))
    expected = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert ids == expected and cut == 0


def test_layout_truncates_like_the_pipeline_and_counts(pipe):
    tok = pipe.tokenizer
    text = "x" * 200  # one token per byte in the byte-level tokenizer
    ids, cut = _text.layout(tok, _text.content_ids(tok, text))
    expected = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert ids == expected and cut == 200 - (tok.model_max_length - 2)


@pytest.mark.numeric
def test_encoding_from_token_embeddings_equals_the_pipeline_encoding(pipe):
    tok = pipe.tokenizer
    texts = ["a church", "a nude person on a beach"]
    ids = torch.tensor([_text.layout(tok, _text.content_ids(tok, t))[0] for t in texts])
    table = _text.token_embedding(pipe.text_encoder).weight
    ours = _text.encode_from_token_embeds(pipe.text_encoder, table[ids])
    theirs, _ = pipe.encode_prompt(texts, pipe.device, 1, False)
    # the same encoder along another path (embeddings in; a batch of one): equal up to float32 rounding through
    # tiny-random's 2 CLIP layers (widest reduction 37 terms); a wrong position, mask or layer is O(1) off
    assert_close_fp(ours, theirs, terms=37, ulps=8)
    assert_close_fp(_text.encode_ids(pipe.text_encoder, ids, batch_size=1), theirs, terms=37, ulps=8)


def test_searchable_tokens_exclude_special_tokens(pipe):
    tok = pipe.tokenizer
    ids = set(_text.searchable_token_ids(tok).tolist())
    assert not ids & set(tok.all_special_ids)
    assert len(ids) == len(tok) - len(set(tok.all_special_ids))
