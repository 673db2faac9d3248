"""Write a CLIP ViT-L/14-shaped model with RANDOM weights to a local folder, as ``save_pretrained`` does.

The CLIP judges load ``openai/clip-vit-large-patch14`` from the Hugging Face cache; where the hub is not
reachable, this folder stands in for it (``--option judge:clip-score.model=FOLDER``) so that the full-size
path (224 px preprocessing, ViT-L/14's 257 tokens, 768-d projections, SD's CLIP tokenizer) runs offline.
Its scores mean nothing; what it proves is that the user's path loads and runs.

    python benchmarks/random_clip.py /tmp/clip-vit-l14-random        # ~1.7 GB (fp32)

``--safety-checker`` writes SD's safety checker (the same vision tower) in the same way, for the ``filter``
defense (``--option defense:filter.checker=FOLDER``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# ViT-L/14's vision tower, as in CLIP ViT-L/14 and SD's safety checker.
VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
          "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu"}


def clip_image_processor():
    from transformers import CLIPImageProcessor

    # ViT-L/14's preprocessing: shortest side 224, centre crop, CLIP's mean/std
    return CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])


def write_random_clip(folder: str | Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPModel

    from benchmark.models.sd14_shaped import sd14_tokenizer

    folder = Path(folder)
    tokenizer, _ = sd14_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 768, "intermediate_size": 3072,
                     "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
                     "hidden_act": "quick_gelu", "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config=VISION, projection_dim=768,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    images = clip_image_processor()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    images.save_pretrained(folder)  # preprocessor_config.json, as the hub folder has it
    tokenizer.save_pretrained(folder)
    return folder


def write_random_safety_checker(folder: str | Path, seed: int = 0) -> Path:
    """SD's safety checker (a ViT-L/14 vision tower, 17 concept and 3 special-care embeddings) with RANDOM
    weights, with its preprocessor, for the ``filter`` defense (``--option defense:filter.checker=FOLDER``).
    Its flags mean nothing; it proves the full-size filter path loads and runs offline (~1.2 GB)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    folder = Path(folder)
    config = CLIPConfig(text_config={"hidden_size": 768}, vision_config=VISION, projection_dim=768)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        checker = StableDiffusionSafetyChecker(config)
    folder.mkdir(parents=True, exist_ok=True)
    checker.save_pretrained(folder, safe_serialization=True)
    clip_image_processor().save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--safety-checker", action="store_true",
                        help="write SD's safety checker (ViT-L/14-shaped, random) instead, for defense 'filter'")
    args = parser.parse_args(argv)
    write = write_random_safety_checker if args.safety_checker else write_random_clip
    print(write(args.folder, args.seed))


if __name__ == "__main__":
    main()
