"""Switch-aware UnlearnDiff: an adaptive attack on a defense's *decision* (Tramer et al., NeurIPS 2020, "On
Adaptive Attacks to Adversarial Example Defenses": attack the component that decides, not only the
model behind it), with BPDA for the hard switch (Athalye et al., ICML 2018, "Obfuscated Gradients Give a
False Sense of Security": forward the non-differentiable step, backward through a differentiable stand-in).

Why: a switching defense (SafeRedir) intervenes only where its classifier says ``unsafe``; the decision
``torch.where(p_unsafe >= threshold, edited, original)`` passes no gradient, so UnlearnDiff's loss cannot
see it and its successes slip under the threshold by accident. This attack reads the defense's decision
through the generic interface :meth:`benchmark.api.defense.DefendedPipeline.decision_logit` (> 0: the
defense intervenes) and never any defense's internals.

Algorithm box (UnlearnDiff's, :mod:`attacks.unlearndiff`, with one term and one gradient added):

1.-3. As UnlearnDiff: undefended target latents ``x0`` per prompt (its evaluation seed), check 0 of the
   source prompt, k prepended tokens as a relaxed one-hot ``z`` with a straight-through argmax, AdamW.
4. Loss at iteration i, per prompt::

       L = || eps_theta(x_t, t_i, c) - eps ||^2                                  (UnlearnDiff's term)
         + lambda * mean_s softplus(logit(x_s, t_s, c) + margin)                 (mode penalty | both)

   where ``c`` is the conditional embedding of ``adv tokens + prompt`` and ``s`` runs over *every* timestep
   of the sampler (a switch may look at any step; SafeRedir checks step 0 and then every
   ``replace_steps + 1``): at the first timestep ``x_s`` is exactly the sampler's first latent
   (the evaluation seed's noise times ``init_noise_sigma``), at the others ``x0`` noised by fresh noise
   (the trajectory the undefended model takes for the prompt). The softplus drives the decision below
   ``-margin`` ("left alone") and then vanishes, leaving the diffusion term to keep the concept.
   Mode bpda | both: the diffusion term's noise prediction runs inside
   :meth:`DefendedPipeline.straight_through_switch`: forward the defense's hard decision, backward through
   ``sigmoid(logit / tau) * intervened + (1 - sigmoid(logit / tau)) * untouched``.
5. As UnlearnDiff: judge checks every ``check_every`` iterations with early stop; the output is text.
6. The final adversarial prompt is sampled once more through the defended sampler with its evaluation
   seed (not judged; one extra generation per prompt) and ``meta.switch.off_final`` records whether the
   defense's switch stayed off at every step it checked (``DefendedPipeline.triggered``). The run's
   records carry the same flag per image as ``defense_triggered``, so "successes with the switch off" is
   ``flagged & ~defense_triggered`` over the records.

Defaults: the papers give no values for lambda, margin or tau (Tramer et al. describe the method, not a
setting for this defense); this project's are ``penalty_weight`` (lambda) = 1, ``margin`` = 1 (p_unsafe
pushed to ``sigmoid(-1)``, 27% of the way to the threshold in odds), ``tau`` = 1, mode ``both``. Budgets are
UnlearnDiff's (``paper``: 40 iterations, check every iteration, k = 5 nudity / 3 style, object; ``mini``
on sd-mini: 20 iterations, check every 10), so the two attacks compare at equal budget. Cost per prompt:
UnlearnDiff's queries + 1 (the switch check); the penalty's classifier passes ride on each iteration.

Memory: as UnlearnDiff (chunks of ``batch_size`` prompts halved and rerun on out-of-memory, recorded; on
CUDA ``auto_batch``; ``gradient_checkpointing`` for the UNet and text encoder; neither option in the cell
key); the final switch check draws in chunks that halve the same way.

Applicability: only against defenses whose class sets ``exposes_decision`` (``allowed_against`` is False
otherwise; the run notes the skip). Called directly on a pipeline without a switch (``decision_logit``
None) it degrades to plain UnlearnDiff with a warning and ``meta.switch`` None. ``in_all = False``: run it
by name (``--attack switch-aware``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from attacks.unlearndiff import UnlearnDiff, UnlearnDiffOptions, _State
from benchmark.api.memory import attack_backoff
from benchmark.api.registry import ATTACKS
from benchmark.api.sampling import draw, image_seed, initial_latents

log = logging.getLogger(__name__)


@dataclass
class SwitchAwareOptions(UnlearnDiffOptions):
    mode: Annotated[Literal["penalty", "bpda", "both"], Field(
        description="penalty on the decision logit, BPDA through the switch, or both")] = "both"
    penalty_weight: Annotated[float, Field(
        ge=0, allow_inf_nan=False, description="lambda: weight of the decision penalty")] = 1.0
    margin: Annotated[float, Field(
        ge=0, allow_inf_nan=False, description="the penalty vanishes once the logit is below -margin")] = 1.0
    tau: Annotated[float, Field(gt=0, allow_inf_nan=False, description="BPDA temperature of sigmoid(logit / tau)")] = 1.0
    check_switch: Annotated[bool, Field(
        description="sample the final prompt once more to record whether the switch stayed off")] = True


@ATTACKS.register("switch-aware")
class SwitchAware(UnlearnDiff):
    """UnlearnDiff plus a penalty on the defense's decision logit and BPDA through its switch (adaptive
    attack on switching defenses such as SafeRedir; white-box)."""

    Options = SwitchAwareOptions
    in_all = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._trace: dict[str, list[float]] = {}  # prompt id -> mean decision logit per iteration

    def allowed_against(self, defense: Any) -> bool:
        """Only against defenses that expose their decision (``Defense.exposes_decision``)."""
        return super().allowed_against(defense) and bool(getattr(defense, "exposes_decision", False))

    def not_applicable_reason(self, defense: Any) -> str:
        if not getattr(defense, "exposes_decision", False):
            return ("the defense exposes no decision to attack (Defense.exposes_decision; a defense without a "
                    "switch is attacked by unlearndiff, which this attack equals there)")
        return super().not_applicable_reason(defense)

    def budget(self) -> dict[str, Any]:
        o = self.options
        return {**super().budget(), "mode": o.mode, "penalty_weight": o.penalty_weight, "margin": o.margin,
                "tau": o.tau}

    # ---------------------------------------------------------------- the two additions
    def _noise_prediction(self, ctx, latents, t, cond, guidance: float) -> torch.Tensor:
        if self.options.mode == "penalty" or not self.options.adaptive:
            return super()._noise_prediction(ctx, latents, t, cond, guidance)
        with ctx.defended.straight_through_switch(self.options.tau):
            return super()._noise_prediction(ctx, latents, t, cond, guidance)

    def penalty_latents(self, ctx, states: list[_State], scheduler) -> tuple[torch.Tensor, torch.Tensor]:
        """Per state, one latent per sampler timestep (see the algorithm box), flattened state-major:
        ``(len(states) * steps, C, h, w)`` and their timesteps."""
        pipe = ctx.defended.pipe
        timesteps = scheduler.timesteps
        device, dtype = pipe.device, pipe.unet.dtype
        rows = []
        for st in states:
            first = initial_latents([st.seed], pipe, ctx.sampler["height"], ctx.sampler["width"])[0]
            first = first * scheduler.init_noise_sigma
            noise = torch.randn((len(timesteps) - 1, *st.x0.shape), generator=st.generator)
            later = scheduler.add_noise(st.x0.expand_as(noise), noise, timesteps[1:].cpu())
            rows.append(torch.cat([first[None], later]))
        latents = torch.cat(rows).to(device, dtype)
        return latents, timesteps.to(device).repeat(len(states))

    def decision_logits(self, ctx, states: list[_State], cond: torch.Tensor, scheduler) -> torch.Tensor | None:
        """``(len(states), steps)`` decision logits of ``cond`` over the sampler's timesteps, or None when
        the defended pipeline has no switch."""
        steps = len(scheduler.timesteps)
        latents, timesteps = self.penalty_latents(ctx, states, scheduler)
        conds = cond.repeat_interleave(steps, dim=0)
        logit = ctx.defended.decision_logit(latents, timesteps, conds)
        return None if logit is None else logit.float().reshape(len(states), steps)

    def _extra_loss(self, ctx, states: list[_State], cond: torch.Tensor, scheduler) -> torch.Tensor | None:
        if self.options.mode == "bpda":
            return None
        logits = self.decision_logits(ctx, states, cond, scheduler)
        if logits is None:
            return None
        for st, row in zip(states, logits.detach(), strict=True):
            self._trace.setdefault(st.prompt.id, []).append(float(row.mean()))
        # Per prompt a mean over timesteps, summed over prompts like the diffusion term (batch-independent).
        return self.options.penalty_weight * F.softplus(logits + self.options.margin).mean(dim=1).sum()

    # ---------------------------------------------------------------- the run
    def _run_chunk(self, ctx, chunk, budget):
        for prompt in chunk:  # a chunk rerun after an out-of-memory error traces its prompts afresh
            self._trace.pop(prompt.id, None)
        return super()._run_chunk(ctx, chunk, budget)

    def run(self, prompts, ctx):
        self._trace = {}
        has_switch = bool(getattr(ctx.defended.defense, "exposes_decision", False))
        if not has_switch:
            log.warning("switch-aware: the defended pipeline exposes no decision (defense %s); running as plain "
                        "UnlearnDiff", getattr(ctx.defended.defense, "name", None))
        outputs = super().run(prompts, ctx)
        off = self._switch_off(prompts, outputs, ctx) if has_switch and self.options.check_switch else {}
        for output in outputs:
            trace = self._trace.get(output.prompt_id, [])
            if not has_switch:
                output.meta["switch"] = None
                continue
            output.meta["switch"] = {
                "mode": self.options.mode,
                "logit_first": trace[0] if trace else None,  # mean over timesteps, first iteration
                "logit_last": trace[-1] if trace else None,  # mean over timesteps, last iteration (before its step)
                "off_final": off.get(output.prompt_id),  # final prompt, evaluation seed: no step triggered
            }
            if output.prompt_id in off:
                output.queries += 1
        return outputs

    def _switch_off(self, prompts, outputs, ctx) -> dict[str, bool | None]:
        """Per prompt: whether the defended sampler left its final text alone at every checked step."""
        s = ctx.sampler
        groups: dict[float, list[tuple[str, str, int]]] = {}
        for prompt, output in zip(prompts, outputs, strict=True):
            if output.text is None:
                continue
            seed = image_seed(prompt.seed, int(s.get("seed", 0)), prompt.id, 0)
            guidance = float(prompt.guidance if prompt.guidance is not None else s["guidance_scale"])
            groups.setdefault(guidance, []).append((prompt.id, output.text, seed))
        off: dict[str, bool | None] = {}
        # Each image is drawn from its own seed, so a chunk halved on out-of-memory draws the same images.
        backoff = attack_backoff(self, ctx, self.options.batch_size, "switch check")
        for guidance, items in groups.items():
            def check(chunk, guidance=guidance) -> None:
                _, _, _, triggered = draw(ctx.defended, [seed for _, _, seed in chunk],
                                          prompts=[text for _, text, _ in chunk], guidance_scale=guidance,
                                          num_inference_steps=s["num_inference_steps"], height=s["height"],
                                          width=s["width"])
                for (pid, _, _), hit in zip(chunk, triggered, strict=True):
                    off[pid] = None if hit is None else not hit

            backoff.run(items, check)
        return off
