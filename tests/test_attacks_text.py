"""The token helpers that Ring-A-Bell and UnlearnDiff build on must reproduce the pipeline's own prompt
encoding; otherwise the attacks optimise a prompt the generate stage never sees. Random weights (tiny-random):
these tests check consistency, not quality."""

import pytest
import torch

from attacks import _text
from benchmark.models.tiny_random import TinyRandomModel


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


def test_encoding_from_token_embeddings_equals_the_pipeline_encoding(pipe):
    tok = pipe.tokenizer
    texts = ["a church", "a nude person on a beach"]
    ids = torch.tensor([_text.layout(tok, _text.content_ids(tok, t))[0] for t in texts])
    table = _text.token_embedding(pipe.text_encoder).weight
    ours = _text.encode_from_token_embeds(pipe.text_encoder, table[ids])
    theirs, _ = pipe.encode_prompt(texts, pipe.device, 1, False)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(_text.encode_ids(pipe.text_encoder, ids, batch_size=1), theirs, atol=1e-5)


def test_searchable_tokens_exclude_special_tokens(pipe):
    tok = pipe.tokenizer
    ids = set(_text.searchable_token_ids(tok).tolist())
    assert not ids & set(tok.all_special_ids)
    assert len(ids) == len(tok) - len(set(tok.all_special_ids))
