"""An offline CLIPTokenizer for tiny random models (tiny-random pipeline, tiny random CLIP judge)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def byte_level_clip_tokenizer(model_max_length: int = 77) -> Any:
    """A real ``CLIPTokenizer`` over a byte-level character vocabulary, built offline.

    Every byte maps to a token (with and without CLIP's ``</w>`` end-of-word suffix) and there are no
    merges, so any text tokenizes (one token per byte) and long prompts exercise truncation.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for char in alphabet:
            vocab[char + suffix] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="byte-clip-tokenizer-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True, model_max_length=model_max_length)
