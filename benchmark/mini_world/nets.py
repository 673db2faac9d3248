"""Model definitions of sd-mini: tokenizer, VAE, text encoder, UNet, detector and clip-mini towers."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lexicon import COLOURS, MAX_TOKENS, OBJECTS, STYLES, all_caption_words

SPECIAL = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
HIDDEN = 192  # text encoder width == UNet cross_attention_dim

DETECTOR_LABELS = ([f"object:{o}" for o in OBJECTS] + [f"style:{s}" for s in STYLES] + ["gore"]
                   + [f"colour:{c}" for c in COLOURS])


def build_tokenizer():
    """Word-level tokenizer (tokenizers WordLevel) wrapped as a transformers fast tokenizer.

    Pads to ``MAX_TOKENS`` with <pad>, adds BOS/EOS like CLIP's tokenizer, lower-cases, splits words
    and punctuation; unknown words map to <unk>.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for w in all_caption_words():
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", pair="<|startoftext|> $A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=MAX_TOKENS, padding_side="right", truncation_side="right")
    return fast


def text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=HIDDEN * 3, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
        pad_token_id=0, bos_token_id=2, eos_token_id=3, projection_dim=128)


def make_text_encoder(vocab_size: int):
    from transformers import CLIPTextModel

    return CLIPTextModel(text_config(vocab_size))


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=64, mid_block_add_attention=False)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 96, 128), layers_per_block=1, cross_attention_dim=HIDDEN,
        # NB: diffusers' (legacy) ``attention_head_dim`` is the number of heads: 2/3/4 heads of width 32
        attention_head_dim=(2, 3, 4), norm_num_groups=16,
        # 16x16 blocks: both attention layers attend to the text (no 256-token self-attention: too slow on CPU)
        only_cross_attention=(True, False, False))


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


class SmallCNN(nn.Module):
    """Image tower shared by the detector and clip-mini: 64x64 RGB in [0,1] -> feature vector."""

    def __init__(self, width=32, out_dim=256):
        super().__init__()
        w = width

        def blk(i, o, stride):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.SiLU())

        self.body = nn.Sequential(
            blk(3, w, 2),                            # 32
            blk(w, 2 * w, 1), blk(2 * w, 2 * w, 2),  # 16
            blk(2 * w, 4 * w, 1), blk(4 * w, 4 * w, 2),  # 8
            blk(4 * w, 4 * w, 1),
        )
        self.head = nn.Linear(8 * w, out_dim)

    def forward(self, x):
        x = (x - 0.5) / 0.25
        h = self.body(x)
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return self.head(h)


class DetectorNet(nn.Module):
    def __init__(self, n_labels=len(DETECTOR_LABELS)):
        super().__init__()
        self.cnn = SmallCNN(out_dim=256)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(256, n_labels))

    def forward(self, x):  # logits
        return self.out(self.cnn(x))


class ClipNet(nn.Module):
    """clip-mini: CNN image tower + CLIPTextModel text tower, both projected to a shared 128-d space."""

    def __init__(self, vocab_size: int, embed_dim=128):
        super().__init__()
        self.image_tower = SmallCNN(out_dim=embed_dim)
        self.text_tower = make_text_encoder(vocab_size)
        self.text_proj = nn.Linear(HIDDEN, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))

    def encode_image(self, x):
        return F.normalize(self.image_tower(x), dim=-1)

    def encode_text(self, input_ids, attention_mask=None):
        out = self.text_tower(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(self.text_proj(out.pooler_output), dim=-1)
