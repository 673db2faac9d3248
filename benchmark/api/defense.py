"""The defense interface.

A defense is prepared once per (model, task, config) -- training, editing or loading its artifact --
and then applied to the loaded base pipeline, giving a :class:`DefendedPipeline` that the generate
stage samples from and that white-box attacks optimise through.

Kinds:

* ``weight-edit``: changes weights (ESD, UCE, a published unlearned checkpoint). Must undo its edit in
  :meth:`DefendedPipeline.close`, since the base pipeline is shared with the other defenses of a run.
* ``inference-time``: changes sampling through diffusers' own extension points
  (``negative_prompt``, ``callback_on_step_end``, attention processors), never by monkeypatching.
* ``filter``: blocks finished images; a blocked image counts as not broken.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image

from benchmark.api.component import Component

if TYPE_CHECKING:
    from benchmark.api.model import LoadedModel
    from benchmark.api.task import Task


class DefenseKind(str, Enum):
    NONE = "none"
    WEIGHT_EDIT = "weight-edit"
    INFERENCE_TIME = "inference-time"
    FILTER = "filter"


@dataclass
class PrepareContext:
    """What :meth:`Defense.prepare` may use. ``artifact_dir`` is content-addressed by the defense's config,
    the model and the task: whatever is written there is reused by every later run."""

    model: LoadedModel
    task: Task
    artifact_dir: Path


class DefendedPipeline:
    """The defended sampler: the base pipeline plus the defense's call arguments and filter.

    Subclass and override :meth:`call_kwargs` (inference-time), :meth:`blocked` (filters) or
    :meth:`close` (weight edits that must be undone).
    """

    def __init__(self, model: LoadedModel, defense: Defense, task: Task):
        self.model = model
        self.pipe = model.pipe
        self.defense = defense
        self.task = task

    def call_kwargs(self, batch_size: int) -> dict[str, Any]:
        """Extra keyword arguments for ``StableDiffusionPipeline.__call__``."""
        return {}

    def blocked(self, images: Sequence[Image.Image]) -> list[bool]:
        """Which finished images the defense refuses to return (filters only)."""
        return [False] * len(images)

    def triggered(self) -> list[bool] | None:
        """For defenses with a switch (SafeRedir's classifier): per image of the last :meth:`generate` call,
        whether the defense intervened. Recorded so that its false-positive rate on benign prompts is
        measured. None: the defense has no switch."""
        return None

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str] | None,
        latents: torch.Tensor,
        *,
        prompt_embeds: torch.Tensor | None = None,
        num_inference_steps: int,
        guidance_scale: float,
        height: int,
        width: int,
    ) -> list[Image.Image]:
        """Sample one image per initial latent. ``latents`` fix the noise of each image, which is what
        makes an image independent of the batch it was drawn in."""
        kwargs = dict(self.call_kwargs(latents.shape[0]))
        output = self.pipe(
            prompt=prompts,
            prompt_embeds=prompt_embeds,
            latents=latents,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            output_type="pil",
            **kwargs,
        )
        return list(output.images)

    # ------------------------------------------------------------------ differentiable path (white-box attacks)
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Conditional prompt embeddings ``(batch, seq, dim)`` exactly as the pipeline computes them
        (no gradient; attacks that optimise tokens build their own differentiable embeddings)."""
        with torch.no_grad():
            cond, _ = self.pipe.encode_prompt(prompts, self.pipe.device, 1, False)
        return cond

    def unconditional_embeds(self, batch_size: int) -> torch.Tensor:
        """The embeddings of the unconditional half of classifier-free guidance (the empty prompt;
        negative-prompt defenses override this)."""
        if getattr(self, "_uncond_cache", None) is None or self._uncond_cache.shape[0] != 1:
            self._uncond_cache = self.encode_prompts([""])
        return self._uncond_cache.expand(batch_size, -1, -1)

    def conditioning(self, cond_embeds: torch.Tensor, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The conditional embedding the UNet sees at this step (identity by default; SafeRedir redirects it).
        Must be differentiable w.r.t. ``cond_embeds`` when the defense declares ``differentiable``."""
        return cond_embeds

    def noise_prediction(self, latents: torch.Tensor, timestep: torch.Tensor | int, cond_embeds: torch.Tensor,
                         *, guidance_scale: float) -> torch.Tensor:
        """The defended model's (guided) noise prediction at one denoising step, differentiable w.r.t.
        ``cond_embeds``. It is what :meth:`generate` uses at that step (tested per defense), so a white-box
        attack that minimises a loss on it attacks the defended sampler, not the bare UNet.
        ``guidance_scale`` 1 gives the conditional prediction alone."""
        unet = self.pipe.unet
        cond = self.conditioning(cond_embeds, latents, timestep)
        if guidance_scale == 1.0:
            return unet(latents, timestep, encoder_hidden_states=cond).sample
        uncond = self.unconditional_embeds(latents.shape[0]).to(cond.dtype)
        both = unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_uncond, eps_cond = both.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    # ------------------------------------------------------------------ the switch (attacks on the decision)
    # Defenses that intervene only where a classifier decides to (SafeRedir) expose that decision, so that
    # an adaptive attack can attack it (Tramer et al. 2020) instead of slipping under it by accident.
    _switch_tau: float | None = None

    def decision_logit(self, latents: torch.Tensor, timestep: torch.Tensor | int,
                       cond_embeds: torch.Tensor) -> torch.Tensor | None:
        """Per sample ``(batch,)``: a differentiable logit of the defense's decision at one denoising step,
        on the inputs of :meth:`conditioning` (``timestep`` a scalar or one per sample). Positive where the
        defense intervenes (the boundary itself follows the defense's own comparison), and monotone in the
        defense's score, so lowering it moves a sample towards "left alone". Differentiable w.r.t.
        ``cond_embeds``. None (the default): the defense has no switch; :attr:`Defense.exposes_decision`
        says so before any work."""
        return None

    def switch(self, decision: torch.Tensor, logit: torch.Tensor, intervened: torch.Tensor,
               untouched: torch.Tensor) -> torch.Tensor:
        """Apply a hard per-sample decision (``decision`` bool ``(batch,)``): ``intervened`` where it is
        true, ``untouched`` elsewhere. Switching defenses route their decision through here so that, inside
        :meth:`straight_through_switch`, the forward value stays exactly the hard one while the gradient is
        that of the soft mix ``sigmoid(logit / tau) * intervened + (1 - sigmoid) * untouched`` (BPDA,
        Athalye et al. 2018); outside it, the decision passes no gradient, as in sampling."""
        shape = (-1,) + (1,) * (intervened.dim() - 1)
        hard = torch.where(decision.reshape(shape), intervened, untouched)
        if self._switch_tau is None:
            return hard
        weight = torch.sigmoid(logit.float() / self._switch_tau).to(intervened.dtype).reshape(shape)
        soft = weight * intervened + (1 - weight) * untouched
        return hard + (soft - soft.detach())  # forward: hard (x - x is exactly 0); backward: soft

    @contextmanager
    def straight_through_switch(self, tau: float) -> Iterator[None]:
        """Within the block, :meth:`switch` passes straight-through gradients with temperature ``tau``."""
        if not tau > 0:
            raise ValueError(f"straight_through_switch: tau must be > 0, got {tau}")
        previous, self._switch_tau = self._switch_tau, float(tau)
        try:
            yield
        finally:
            self._switch_tau = previous

    def close(self) -> None:
        """Undo whatever :meth:`Defense.apply` changed on the shared base pipeline."""


class Defense(Component):
    """Base class of defenses: set ``kind``, declare ``Options``, implement :meth:`apply`
    (and :meth:`prepare` if the defense has an artifact to build)."""

    component_kind = "defense"
    kind: ClassVar[DefenseKind] = DefenseKind.INFERENCE_TIME
    supported_models: ClassVar[tuple[str, ...]] = ("*",)
    # False for defenses that need user-supplied data (a checkpoint path); ``--defense all`` leaves them out.
    runs_without_options: ClassVar[bool] = True
    # Whether gradients w.r.t. the prompt embedding flow through the defended sampler; white-box
    # attacks need it to be adaptive. A hard switch (a classifier's decision) can still pass gradients
    # through the branch it took.
    differentiable: ClassVar[bool] = True
    # Whether its pipeline exposes a hard decision through :meth:`DefendedPipeline.decision_logit`
    # (attacks on the switch, e.g. ``switch-aware``, apply only to these).
    exposes_decision: ClassVar[bool] = False

    def supports(self, model_name: str) -> bool:
        return "*" in self.supported_models or model_name in self.supported_models

    def prepare_config(self) -> dict[str, Any]:
        """What the artifact of :meth:`prepare` depends on (default: every option). Defenses with
        inference-only options (thresholds, schedules) return less, so changing those reuses the artifact."""
        return self.config()

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        """Build the artifact into ``ctx.artifact_dir``; return metadata to record (e.g. losses)."""
        return {}

    @abstractmethod
    def apply(self, model: LoadedModel, task: Task, artifact_dir: Path) -> DefendedPipeline: ...
