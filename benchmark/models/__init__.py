"""Registered models. Entries are lazy: listing them imports neither torch nor diffusers."""

from __future__ import annotations

from pathlib import Path

from benchmark.registry import MODELS

MODELS.register_lazy("sd-mini", "benchmark.models.sd_mini:SdMiniModel",
                     "The embedded sd-mini world: a small real text-to-image model trained by the project, 64px (default)")
MODELS.register_lazy("tiny-random", "benchmark.models.tiny_random:TinyRandomModel",
                     "Tiny StableDiffusionPipeline with fixed-seed RANDOM weights, for tests only")
MODELS.register_lazy("sd-1.4", "benchmark.models.catalog:SD14",
                     "Stable Diffusion 1.4 (CompVis/stable-diffusion-v1-4), 512px, from the hub cache")
MODELS.register_lazy("sd-1.5", "benchmark.models.catalog:SD15",
                     "Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5), 512px, from the hub cache")
MODELS.register_lazy("sd-2.1", "benchmark.models.catalog:SD21",
                     "Stable Diffusion 2.1 base (stabilityai/stable-diffusion-2-1-base), 512px, from the hub cache")


def get_model_spec(name_or_path: str):
    """A registered model by name, or a local pipeline folder by path."""
    from benchmark.models.pretrained import LocalFolderModel

    if name_or_path in MODELS:
        spec = MODELS.get(name_or_path)
        return spec() if isinstance(spec, type) else spec
    path = Path(name_or_path)
    if path.exists() or "/" in name_or_path or name_or_path.startswith("."):
        return LocalFolderModel(folder=path)
    MODELS.get(name_or_path)  # raises with a did-you-mean
    raise AssertionError("unreachable")
