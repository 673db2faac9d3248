"""Write a CLIP ViT-L/14-shaped model with RANDOM weights to a local folder, as ``save_pretrained`` does.

The CLIP judges load ``openai/clip-vit-large-patch14`` from the Hugging Face cache; where the hub is not
reachable, this folder stands in for it (``--option judge:clip-score.model=FOLDER``) so that the full-size
path (224 px preprocessing, ViT-L/14's 257 tokens, 768-d projections, SD's CLIP tokenizer) runs offline.
Its scores mean nothing; what it proves is that the user's path loads and runs.

    python benchmarks/random_clip.py /tmp/clip-vit-l14-random        # ~1.7 GB (fp32)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def write_random_clip(folder: str | Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from benchmark.models.sd14_shaped import sd14_tokenizer

    folder = Path(folder)
    tokenizer, _ = sd14_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 768, "intermediate_size": 3072,
                     "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
                     "hidden_act": "quick_gelu", "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu"},
        projection_dim=768,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    images = CLIPImageProcessor(  # ViT-L/14's preprocessing: shortest side 224, centre crop, CLIP's mean/std
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    images.save_pretrained(folder)  # preprocessor_config.json, as the hub folder has it
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_random_clip(args.folder, args.seed))


if __name__ == "__main__":
    main()
