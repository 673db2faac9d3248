"""``tiny-random``: a complete diffusers StableDiffusionPipeline with small, fixed-seed random weights.

For tests and plumbing checks only: its images are noise-like and say nothing about any defense.
Every component is built from a config (no download): UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, a byte-level CLIPTokenizer built offline, and a DDIM scheduler.
"""

from __future__ import annotations

import torch

from benchmark.api.model import LoadedModel, ModelSpec, SamplerDefaults
from benchmark.api.registry import MODELS
from benchmark.hashing import stable_hash
from benchmark.models.base import prepare_pipeline, random_pipeline

SEED = 0
IMAGE_SIZE = 32


def build_tiny_pipeline() -> torch.nn.Module:
    from diffusers import DDIMScheduler

    from benchmark.models.byte_tokenizer import byte_level_clip_tokenizer

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return random_pipeline(
        SEED, byte_level_clip_tokenizer(77), scheduler,
        unet=dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=IMAGE_SIZE // 2, in_channels=4,
                  out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                  attention_head_dim=8, norm_num_groups=32),
        vae=dict(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                 down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                 up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4,
                 sample_size=IMAGE_SIZE, norm_num_groups=32),
        text_encoder=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          max_position_embeddings=77, layer_norm_eps=1e-5),
    )


@MODELS.register("tiny-random")
class TinyRandomModel(ModelSpec):
    """Tiny StableDiffusionPipeline with fixed-seed RANDOM weights, for tests only (images are noise)."""

    name = "tiny-random"
    description = "Tiny StableDiffusionPipeline with fixed-seed RANDOM weights, for tests only"
    default_tasks = ("toy",)
    defaults = SamplerDefaults(num_inference_steps=4, guidance_scale=5.0, height=IMAGE_SIZE, width=IMAGE_SIZE)

    def load(self, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> LoadedModel:
        pipe = prepare_pipeline(build_tiny_pipeline(), device, dtype)
        key = stable_hash({"model": self.name, "seed": SEED, "version": 1})
        return LoadedModel(self.name, key, pipe, device, dtype, self.defaults, {"model": self.name,
                                                                                "weights": f"random seed {SEED}"})
