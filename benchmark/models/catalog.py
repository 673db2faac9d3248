"""The hub-hosted Stable Diffusion models the literature attacks.

Revisions default to ``main``; the commit the cache resolved to is recorded in every run's provenance
and enters the model's cell key, so two runs on different snapshots never share cells. Pass
``--model-revision <commit>`` to pin one.
"""

from __future__ import annotations

from benchmark.api.registry import MODELS
from benchmark.models.pretrained import HubModel


@MODELS.register("sd-1.4")
class SD14(HubModel):
    """Stable Diffusion 1.4 (CompVis/stable-diffusion-v1-4), 512px, from the hub cache"""

    hub_id = "CompVis/stable-diffusion-v1-4"


@MODELS.register("sd-1.5")
class SD15(HubModel):
    """Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5), 512px, from the hub cache"""

    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@MODELS.register("sd-2.1")
class SD21(HubModel):
    """Stable Diffusion 2.1 base (stabilityai/stable-diffusion-2-1-base), 512px, from the hub cache"""

    hub_id = "stabilityai/stable-diffusion-2-1-base"
