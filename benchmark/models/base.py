"""Helpers shared by the built-in model specs (the interface itself is :mod:`benchmark.api.model`)."""

from __future__ import annotations

from typing import Any

import torch


def prepare_pipeline(pipe: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move to device/dtype, freeze, silence the per-call progress bar (the harness shows its own)."""
    # Cast only what differs: diffusers warns (rightly) about blanket casts of loaded models.
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    pipe = pipe.to(device)
    for module_name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, module_name, None)
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_pipeline(seed: int, tokenizer: Any, scheduler: Any, unet: dict[str, Any], vae: dict[str, Any],
                    text_encoder: dict[str, Any]) -> Any:
    """A StableDiffusionPipeline built from configurations, with fixed-seed RANDOM weights (no download).

    ``unet``, ``vae`` and ``text_encoder`` are the keyword arguments of ``UNet2DConditionModel``,
    ``AutoencoderKL`` and ``CLIPTextConfig`` (the token ids and vocabulary size come from ``tokenizer``). The
    three are built in that order after ``torch.manual_seed(seed)``: the order fixes the weights, so changing
    it changes every random model's images (bump the model's VERSION).
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # fork_rng: building the model must not move the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_model = UNet2DConditionModel(**unet)
        vae_model = AutoencoderKL(**vae)
        text_model = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **text_encoder,
        ))
    return StableDiffusionPipeline(
        vae=vae_model, text_encoder=text_model, tokenizer=tokenizer, unet=unet_model, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
