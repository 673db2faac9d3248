"""The hub-hosted Stable Diffusion models the literature attacks.

Revisions default to ``main``; the commit the cache resolved to is recorded in every run's provenance
and enters the model's cell key, so two runs on different snapshots never share cells. Pass
``--model-revision <commit>`` to pin one.
"""

from benchmark.models.base import SamplerDefaults
from benchmark.models.pretrained import HubModel

SD14 = HubModel(name="sd-1.4", hub_id="CompVis/stable-diffusion-v1-4",
                description="Stable Diffusion 1.4, 512px")
SD15 = HubModel(name="sd-1.5", hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
                description="Stable Diffusion 1.5, 512px")
SD21 = HubModel(name="sd-2.1", hub_id="stabilityai/stable-diffusion-2-1-base",
                description="Stable Diffusion 2.1 base, 512px",
                defaults=SamplerDefaults(50, 7.5, 512, 512))
