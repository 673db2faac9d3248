"""sd-mini: the embedded miniature text-to-image world of unlearn-arena (see README.md).

Cheap to import: the lexicon/tasks are plain Python; torch models load only when asked for.
"""
from __future__ import annotations

from pathlib import Path

from .lexicon import COLOURS, LEXICON, OBJECTS, STYLES
from .tasks import TASKS, MiniTaskSpec

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
DETECTOR_DIR = WEIGHTS_DIR / "detector"
CLIP_DIR = WEIGHTS_DIR / "clip"

DEFAULT_SAMPLING = dict(num_inference_steps=25, guidance_scale=5.0, height=64, width=64)

__all__ = ["PIPELINE_DIR", "WEIGHTS_DIR", "DEFAULT_SAMPLING", "draws_world", "load_pipeline", "MiniDetector",
           "ClipMini", "TASKS", "LEXICON", "MiniTaskSpec", "OBJECTS", "STYLES", "COLOURS"]


def draws_world(model_name: str | None) -> bool:
    """Whether model ``model_name`` draws this world (sd-mini): only then do the world's renderer, exact
    masks, detector and held-out captions describe what the model generates (tiny-random shares the tasks'
    prompts, not the world)."""
    return model_name == "sd-mini"


def load_pipeline(device="cpu", dtype=None, path=None):
    """Load the shipped sd-mini StableDiffusionPipeline (float32 by default)."""
    from .detectors import load_pipeline as _lp

    return _lp(device=device, dtype=dtype, path=path)


def __getattr__(name):
    if name in ("MiniDetector", "ClipMini"):
        from . import detectors

        return getattr(detectors, name)
    raise AttributeError(name)
