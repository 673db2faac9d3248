"""``sd-mini``: the embedded miniature world (benchmark/mini_world), loaded as a real diffusers
StableDiffusionPipeline from its shipped folder, so every defense and attack runs the SD code path."""

from __future__ import annotations

import torch

from benchmark.api.model import LoadedModel, ModelSpec, ModelUnavailableError, SamplerDefaults
from benchmark.api.registry import MODELS
from benchmark.models.pretrained import fingerprint_folder, load_pipeline_folder


@MODELS.register("sd-mini")
class SdMiniModel(ModelSpec):
    """The embedded sd-mini world: 64px, trained by the project, shipped in the repository."""

    name = "sd-mini"
    description = "The embedded sd-mini world: a small real text-to-image model trained by the project, 64px (default)"
    default_tasks = ("mini-unsafe", "mini-object", "mini-style")

    @property
    def defaults(self) -> SamplerDefaults:  # type: ignore[override]
        from benchmark.mini_world import DEFAULT_SAMPLING

        return SamplerDefaults(**DEFAULT_SAMPLING)

    def load(self, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> LoadedModel:
        from benchmark.mini_world import PIPELINE_DIR

        if not (PIPELINE_DIR / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"sd-mini's weights are missing from {PIPELINE_DIR}; reinstall from a full clone, or train them "
                "with `python -m benchmark.mini_world.train` (see benchmark/mini_world/README.md)"
            )
        pipe = load_pipeline_folder(PIPELINE_DIR, device, dtype)
        key = "sd-mini-" + fingerprint_folder(PIPELINE_DIR)
        return LoadedModel(self.name, key, pipe, device, dtype, self.defaults,
                           {"model": self.name, "fingerprint": key})
