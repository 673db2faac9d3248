"""``sd14-shaped``: Stable Diffusion 1.4's architecture at full size with deterministic RANDOM weights.

SD 1.x weights are not reachable everywhere this project is tested, but its architecture and its tokenizer
are. This model is SD-1.4's pipeline built from its published configurations, no download:

* UNet: ``UNet2DConditionModel`` with SD 1.x's blocks (320/640/1280/1280 channels, 2 layers per block, 8
  attention heads, cross-attention width 768; 860 M parameters), 64 x 64 latents;
* VAE: ``AutoencoderKL`` 128/256/512/512, 4 latent channels, 512 px images (scaling factor 0.18215);
* text encoder: ``CLIPTextModel`` ViT-L/14's text tower (12 layers, width 768, 12 heads, quick-GELU, 77
  positions, 49,408 tokens);
* tokenizer: the real SD 1.x CLIP BPE tokenizer (:mod:`benchmark.models.clip_bpe`), or a byte-level stand-in
  when the merges file is not installed (logged, and recorded in the model's provenance and cell key);
* scheduler: SD-1.4's PNDM (scaled-linear betas 0.00085-0.012, PRK steps skipped, offset 1); 50 steps,
  guidance 7.5, 512 x 512 as SD-1.4 samples by default.

Random weights: its images are noise and any ASR or utility figure on it means nothing. What is real is
the cost (time and memory per stage), the tensor shapes, the dtypes and the token handling. Every report of a
run on it says so through its model name.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from benchmark.api.model import LoadedModel, ModelSpec, SamplerDefaults
from benchmark.api.registry import MODELS
from benchmark.hashing import stable_hash
from benchmark.models.base import prepare_pipeline, random_pipeline
from benchmark.models.byte_tokenizer import byte_level_clip_tokenizer
from benchmark.models.clip_bpe import INSTALL_HINT, sd_clip_tokenizer

log = logging.getLogger(__name__)

SEED = 0
VERSION = 1  # bump when the construction below changes: it enters the model's cell key


def sd14_tokenizer() -> tuple[Any, dict[str, str]]:
    """SD 1.x's CLIP tokenizer, or the byte-level stand-in (with a warning) when it is not installed."""
    built = sd_clip_tokenizer(77)
    if built is not None:
        return built
    log.warning("sd14-shaped: the CLIP BPE merges file is not installed, so a byte-level tokenizer stands in "
                "(token ids unlike SD's; one token per byte). For SD's real tokenizer: %s", INSTALL_HINT)
    return byte_level_clip_tokenizer(77), {"tokenizer": "byte-level stand-in"}


def build_sd14_pipeline(tokenizer: Any) -> Any:
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )
    return random_pipeline(
        SEED, tokenizer, scheduler,
        unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=(320, 640, 1280, 1280),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                  cross_attention_dim=768, attention_head_dim=8),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                 block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215),
        text_encoder=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
    )


@MODELS.register("sd14-shaped")
class Sd14ShapedModel(ModelSpec):
    """SD-1.4's architecture at full size (860 M UNet, 512 px, CLIP tokenizer) with RANDOM weights: cost only."""

    name = "sd14-shaped"
    description = ("SD-1.4's architecture at full size with fixed-seed RANDOM weights and SD's CLIP tokenizer: "
                   "for cost, memory and shape checks (images are noise)")
    default_tasks = ("nudity",)
    defaults = SamplerDefaults()  # SD-1.4's: 50 steps, guidance 7.5, 512 x 512

    def load(self, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> LoadedModel:
        tokenizer, tokenizer_provenance = sd14_tokenizer()
        pipe = prepare_pipeline(build_sd14_pipeline(tokenizer), device, dtype)
        identity = {"model": self.name, "seed": SEED, "version": VERSION, **tokenizer_provenance}
        return LoadedModel(self.name, stable_hash(identity), pipe, device, dtype, self.defaults,
                           {**identity, "weights": f"random seed {SEED} (not SD's weights: images mean nothing)"})
