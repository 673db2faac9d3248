"""Token-level helpers shared by the attacks that search over the text encoder's vocabulary
(Ring-A-Bell's genetic search, UnlearnDiff's relaxed one-hot tokens).

The pipeline turns a prompt into ``BOS + tokens + EOS + padding`` of the tokenizer's ``model_max_length``,
truncating the tokens that do not fit; :func:`layout` reproduces that so that an embedding computed here is
the one the pipeline computes for the same text (tested in tests/test_attacks_text.py).
"""

from __future__ import annotations

from typing import Any

import torch


def max_length(tokenizer: Any) -> int:
    return int(tokenizer.model_max_length)


def content_ids(tokenizer: Any, text: str) -> list[int]:
    """The prompt's tokens without BOS/EOS/padding and without truncation."""
    ids = tokenizer(text, truncation=False, add_special_tokens=False).input_ids
    return list(ids)


def layout(tokenizer: Any, tokens: list[int]) -> tuple[list[int], int]:
    """``BOS + tokens + EOS + pad`` at the tokenizer's length, the tokens truncated as the pipeline does.
    Returns the ids and how many content tokens were cut (0 if none)."""
    room = max_length(tokenizer) - 2
    cut = max(0, len(tokens) - room)
    body = tokens[:room]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
    ids += [pad] * (max_length(tokenizer) - len(ids))
    return ids, cut


def searchable_token_ids(tokenizer: Any) -> torch.Tensor:
    """Token ids an attack may place in a prompt: the whole vocabulary less the special tokens (BOS, EOS,
    padding, unknown), which the tokenizer would never produce from text."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)


def decode(tokenizer: Any, ids: list[int]) -> str:
    """Tokens back to text, as a user would type them (the generate stage re-tokenizes this text)."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def token_embedding(text_encoder: Any) -> torch.nn.Embedding:
    return text_encoder.get_input_embeddings()


def encode_from_token_embeds(text_encoder: Any, token_embeds: torch.Tensor) -> torch.Tensor:
    """The text encoder's last hidden state (what the UNet is conditioned on) from token embeddings
    ``(batch, seq, dim)`` instead of ids, so a relaxed (soft) token choice is differentiable.

    ``CLIPTextModel.forward`` takes ids only, so this runs its parts in order: embeddings (adding
    positions), causal encoder, final layer norm. Equal to the pipeline's encoding on one-hot input.
    """
    from transformers.masking_utils import create_causal_mask

    model = getattr(text_encoder, "text_model", text_encoder)  # transformers < 5 nests the parts
    hidden = model.embeddings(inputs_embeds=token_embeds)
    mask = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    out = model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return model.final_layer_norm(out)


@torch.no_grad()
def encode_ids(text_encoder: Any, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Last hidden states for a batch of laid-out ids ``(n, seq)``, in chunks (population scoring)."""
    device = next(text_encoder.parameters()).device
    outs = [text_encoder(ids[i:i + batch_size].to(device))[0] for i in range(0, ids.shape[0], batch_size)]
    return torch.cat(outs)
