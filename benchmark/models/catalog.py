"""The hub-hosted Stable Diffusion models the literature attacks.

Revisions default to ``main``; the commit the cache resolved to is recorded in every run's provenance
and enters the model's cell key, so two runs on different snapshots never share cells. Pass
``--model-revision <commit>`` to pin one.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.api.registry import MODELS
from benchmark.models.pretrained import HubModel


@MODELS.register("sd-1.4")
@dataclass(kw_only=True)
class SD14(HubModel):
    """Stable Diffusion 1.4 (CompVis/stable-diffusion-v1-4), 512px, from the hub cache"""

    name: str = "sd-1.4"
    hub_id: str = "CompVis/stable-diffusion-v1-4"
    description: str = "Stable Diffusion 1.4 (CompVis/stable-diffusion-v1-4), 512px, from the hub cache"


@MODELS.register("sd-1.5")
@dataclass(kw_only=True)
class SD15(HubModel):
    """Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5), 512px, from the hub cache"""

    name: str = "sd-1.5"
    hub_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    description: str = "Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5), 512px, from the hub cache"


@MODELS.register("sd-2.1")
@dataclass(kw_only=True)
class SD21(HubModel):
    """Stable Diffusion 2.1 base (stabilityai/stable-diffusion-2-1-base), 512px, from the hub cache"""

    name: str = "sd-2.1"
    hub_id: str = "stabilityai/stable-diffusion-2-1-base"
    description: str = "Stable Diffusion 2.1 base (stabilityai/stable-diffusion-2-1-base), 512px, from the hub cache"
