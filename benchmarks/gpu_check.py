"""Every GPU check of the harness in one prepared run: throughput, defense overheads, UnlearnDiff batching,
ESD's step time and peak memory, on SD-1.4's architecture (``sd14-shaped``: random weights, real shapes).

What it measures (default: ``--device cuda``, ``sd14-shaped``, fp16, 512 x 512, 20 sampler steps):

1. ``throughput``: images/s of raw diffusers (the loaded ``StableDiffusionPipeline`` called directly) and of
   the harness's sampler (``benchmark.api.sampling.draw`` through the undefended defense), at batch 8 and 16;
   their ratio.
2. ``defenses``: each registered inference-time defense's sampling time over the undefended sampler's,
   same prompts and seeds (SafeRedir with a redirector trained in this run at a tiny budget: its cost is the
   full-size network's, its decisions mean nothing).
3. ``unlearndiff_batching``: UnlearnDiff's seconds per prompt one prompt at a time over batched.
4. ``esd``: seconds per ESD-x training iteration (the paper's DDIM schedule), and peak memory.
5. ``memory``: peak ``torch.cuda.max_memory_allocated`` per sampling batch size and per attack (UnlearnDiff,
   P4D, Concept Inversion, MMA-Diffusion, Ring-A-Bell at tiny budgets).

Every figure is measured in this one run (ratios, not wall times, carry across machines). Each section is
timed and guarded: a section that fails records its error and the run goes on; a global time budget
(``--budget-s``, counted from the start, model loading included) skips or stops what is left, with the
reason. The results are written to ``benchmarks/results/gpu-<date>.json`` (device, versions, commit, each
figure with its definition; rewritten after every section) and printed as a Markdown table; ``--readme
README.md`` puts that table between the README's ``<!-- gpu-check:begin -->`` and ``<!-- gpu-check:end -->``.

    python benchmarks/gpu_check.py                          # a GPU machine: about 5-7 minutes
    python benchmarks/gpu_check.py --out "$OUT" --commit SHA   # a copied tree without .git, only $OUT returned
    python benchmarks/gpu_check.py --sections memory,esd     # a subset, e.g. to rerun what a first run lost
    python benchmarks/gpu_check.py --from-json benchmarks/results/gpu-<date>.json --readme README.md
    python benchmarks/gpu_check.py --tiny --out /tmp/gc     # CPU: the same sections on tiny-random, seconds

It needs the project's dependencies where it runs (diffusers, pydantic, nudenet; clip-anytorch for SD's real
tokenizer, else a byte-level stand-in is used and recorded); a judge that cannot load is replaced by a
never-flagging stand-in, which the results note.

``--tiny`` runs every section on the CPU with ``tiny-random`` (fp32, 32 px, tiny budgets): a plumbing check
that the default test suite runs, so that this script keeps working between GPU sessions. Its numbers mean
nothing; on the CPU the memory figures are null with the reason (there is no CUDA allocator to read).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing (the device machine)

log = logging.getLogger("gpu_check")

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
SCHEMA = 1
CPU_MEMORY = "not measured on cpu: torch.cuda.max_memory_allocated reads the CUDA allocator, which a CPU run has not"
EXTRA_PACKAGES = ("pydantic", "clip-anytorch")  # beside benchmark.harness.provenance's list: what the harness imports


class BudgetExceededError(BaseException):
    """The global time budget ran out. A BaseException so that no ``except Exception`` in the harness
    swallows it: it ends the section (or the part of it) that was running, which is then recorded as cut."""


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one mode (the GPU default, or ``--tiny`` on the CPU)."""

    model: str
    task: str
    device: str
    dtype: str
    steps: int  # sampler steps of every timed generation
    batches: tuple[int, ...]  # throughput batch sizes
    repeats: int  # timed repetitions per throughput batch (after one warm-up)
    overhead_batch: int
    overhead_repeats: int
    saferedir_training: dict[str, int]  # tiny training budget of the redirector prepared in this run
    saferedir_min_s: float  # time left below which SafeRedir (training its redirector first) is skipped
    unlearndiff_prompts: int
    unlearndiff_iterations: int
    esd_iterations: int  # timed ESD-x iterations (after one untimed)
    esd_ddim_steps: int | None  # None: the defense's own (the paper's 50 on SD)
    memory_batches: tuple[int, ...]
    memory_steps: int  # peak memory does not depend on the number of steps
    attack_prompts: int
    attack_options: dict[str, dict[str, Any]]


GPU = Profile(
    model="sd14-shaped", task="nudity", device="cuda", dtype="fp16", steps=20, batches=(8, 16), repeats=2,
    overhead_batch=8, overhead_repeats=2,
    saferedir_training={"pairs": 4, "benign": 2, "steps": 10, "batch": 4, "calibration": 2}, saferedir_min_s=120,
    unlearndiff_prompts=4, unlearndiff_iterations=2, esd_iterations=4, esd_ddim_steps=None,
    memory_batches=(1, 8, 16, 32), memory_steps=2, attack_prompts=8,
    attack_options={  # tiny budgets at the paper presets' batch sizes, which set the peak
        "unlearndiff": {"iterations": 2, "check_every": 2, "early_stop": False, "check_source": False},
        "p4d": {"iterations": 2, "check_every": 2, "early_stop": False, "check_source": False},
        "concept-inversion": {"steps": 2, "images": 16},
        "mma-diffusion": {"steps": 2},
        "ring-a-bell": {"generations": 2},
    },
)
TINY = Profile(  # as small as the code paths allow: the test suite runs it on two busy cores
    model="tiny-random", task="toy", device="cpu", dtype="fp32", steps=1, batches=(1, 2), repeats=1,
    overhead_batch=1, overhead_repeats=1,
    saferedir_training={"pairs": 4, "benign": 2, "steps": 1, "batch": 2, "calibration": 2}, saferedir_min_s=0,
    unlearndiff_prompts=2, unlearndiff_iterations=1, esd_iterations=1, esd_ddim_steps=1,
    memory_batches=(1, 2), memory_steps=1, attack_prompts=1,
    attack_options={
        "unlearndiff": {"iterations": 1, "check_every": 1, "early_stop": False, "check_source": False},
        "p4d": {"iterations": 1, "check_every": 1, "early_stop": False, "check_source": False, "tokens": 2},
        "concept-inversion": {"steps": 1, "images": 1, "batch_size": 1},
        "mma-diffusion": {"steps": 1, "candidates": 2, "topk": 2, "tokens": 2},
        "ring-a-bell": {"generations": 1, "population": 2, "tokens": 2},
    },
)
ATTACKS_MEASURED = ("unlearndiff", "p4d", "concept-inversion", "mma-diffusion", "ring-a-bell")


@dataclass
class Clock:
    """The global time budget, counted from the script's start."""

    budget_s: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def check(self, what: str) -> None:
        if self.remaining() <= 0:
            raise BudgetExceededError(f"time budget of {self.budget_s:g} s spent before {what} "
                                      f"({self.elapsed():.0f} s elapsed)")

    @contextlib.contextmanager
    def deadline(self) -> Iterator[None]:
        """Interrupts the block when the budget runs out (SIGALRM: POSIX main thread only; elsewhere only
        the checks between the parts of a section apply)."""
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            yield
            return

        def ring(signum: int, frame: Any) -> None:
            raise BudgetExceededError(f"time budget of {self.budget_s:g} s ran out ({self.elapsed():.0f} s elapsed)")

        previous = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, max(self.remaining(), 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------------------- recording
@dataclass
class Recorder:
    """One section's figures. A figure is a number with its unit and definition, or None with the reason
    (``skipped``, ``error`` or ``reason``)."""

    name: str
    title: str
    figures: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def add(self, check: str, figure: str, value: float | None, unit: str, definition: str, **extra: Any) -> None:
        if isinstance(value, float):
            value = round(value, 4)
        self.figures.append({"check": check, "figure": figure, "value": value, "unit": unit,
                             "definition": definition, **extra})

    def skip(self, check: str, reason: str) -> None:
        self.figures.append({"check": check, "figure": "-", "value": None, "unit": "", "skipped": reason})

    def fail(self, check: str, error: BaseException) -> None:
        self.figures.append({"check": check, "figure": "-", "value": None, "unit": "", "error": describe(error),
                             "out_of_memory": out_of_memory(error)})


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:300]


def out_of_memory(error: BaseException) -> bool:
    from benchmark.api.memory import is_out_of_memory

    return is_out_of_memory(error)


@contextlib.contextmanager
def guarded(rec: Recorder, check: str) -> Iterator[None]:
    """One part of a section: its failure is recorded and the section goes on (the budget still ends it)."""
    try:
        yield
    except BudgetExceededError:
        raise
    except Exception as error:  # noqa: BLE001 - recorded; the other parts run
        log.error("%s / %s failed: %s", rec.name, check, describe(error))
        log.debug("%s", traceback.format_exc())
        rec.fail(check, error)


# ----------------------------------------------------------------------------------------------- the bench
@dataclass
class Bench:
    """What every section uses: the loaded model, the task, prompts, the sampler settings, the clock."""

    profile: Profile
    model: Any  # benchmark.api.model.LoadedModel
    task: Any
    device: torch.device
    clock: Clock
    scratch: Path
    prompt_set: str
    notes: list[str] = field(default_factory=list)
    _judge: Any = None
    _base_texts: list[str] | None = None

    @property
    def sampler(self) -> dict[str, Any]:
        d = self.model.defaults
        return {"num_inference_steps": self.profile.steps, "guidance_scale": d.guidance_scale,
                "height": d.height, "width": d.width}

    def prompts(self, n: int) -> list[Any]:
        """``n`` prompts of the prompt set, cycled; every other one names the task's concept (so that
        keyword-triggered defenses see both kinds), each with its own seed."""
        from benchmark.api.prompt import Prompt
        from benchmark.api.registry import PROMPT_SETS

        if self._base_texts is None:
            self._base_texts = [p.text for p in PROMPT_SETS.get(self.prompt_set).load(None)]
        concept = self.task.concept_words[0] if self.task.concept_words else ""
        out = []
        for i in range(n):
            text = self._base_texts[i % len(self._base_texts)]
            out.append(Prompt(id=str(i), text=f"{text}, {concept}" if i % 2 and concept else text, seed=i))
        return out

    def texts(self, n: int) -> list[str]:
        return [p.text for p in self.prompts(n)]

    def undefended(self) -> Any:
        from benchmark.api.registry import DEFENSES

        return DEFENSES.get("none")().apply(self.model, self.task, None)

    def judge(self) -> Any:
        """The task's concept judge; a never-flagging stand-in (noted) where it cannot be built here."""
        if self._judge is None:
            from PIL import Image

            from benchmark.api.registry import JUDGES

            spec = self.task.judge
            try:
                judge = JUDGES.get(spec.name)(device=self.device.type, **spec.options)
                judge.score([Image.new("RGB", (64, 64))], ["probe"])  # loads its weights: fails here, not mid-attack
                self._judge = judge
            except Exception as error:  # noqa: BLE001 - the timings go on without the judge's cost
                self.notes.append(f"judge {spec.name} unavailable ({describe(error)}): attacks ran with a stand-in "
                                  "that never flags, so their times leave out the judge's")
                self._judge = NeverFlags()
        return self._judge

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any]) -> float:
        self.sync()
        began = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - began

    @contextlib.contextmanager
    def peak_memory(self) -> Iterator[dict[str, Any]]:
        """Yields a dict filled on exit: peak and baseline (allocated before) bytes, or None with the reason."""
        from benchmark.api.memory import release_cached_memory

        box: dict[str, Any] = {}
        if self.device.type != "cuda":
            yield box
            box.update(peak_bytes=None, baseline_bytes=None, reason=CPU_MEMORY)
            return
        release_cached_memory()
        torch.cuda.reset_peak_memory_stats(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        yield box
        self.sync()
        box.update(peak_bytes=torch.cuda.max_memory_allocated(self.device), baseline_bytes=baseline)


class NeverFlags:
    """Stand-in judge (used only where the task's judge cannot be built on this machine)."""

    name = "stand-in-never-flags"

    def score(self, images: list[Any], prompts: list[str]) -> list[Any]:
        from benchmark.api.judge import JudgeResult

        return [JudgeResult(0.0, False) for _ in images]


def gib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**30, 3)


def add_memory(rec: Recorder, check: str, box: dict[str, Any], definition: str, **extra: Any) -> None:
    """A peak-memory figure from :meth:`Bench.peak_memory`'s dict: GiB, or None with the reason."""
    if "reason" in box:
        extra["reason"] = box["reason"]
    else:
        extra.update(above_baseline_gib=gib(box["peak_bytes"] - box["baseline_bytes"]),
                     baseline_gib=gib(box["baseline_bytes"]))
    rec.add(check, "peak memory", gib(box["peak_bytes"]), "GiB", definition, **extra)


@dataclass
class Batch:
    """One fixed batch through a sampler; remembers per image whether the defense intervened (None: no switch)."""

    texts: list[str]
    seeds: list[int]
    settings: dict[str, Any]
    triggered: list[bool | None] = field(default_factory=list)

    def through(self, pipeline: Any) -> Callable[[], None]:
        from benchmark.api.sampling import draw

        def call() -> None:
            self.triggered = draw(pipeline, self.seeds, prompts=self.texts, **self.settings)[3]
        return call


# ----------------------------------------------------------------------------------------------- 1. throughput
def section_throughput(b: Bench, rec: Recorder) -> None:
    harness = b.undefended()
    for batch in b.profile.batches:
        b.clock.check(f"throughput at batch {batch}")
        check = f"harness vs raw diffusers, batch {batch}"
        with guarded(rec, check):
            measure_throughput(b, rec, check, batch, harness)


def measure_throughput(b: Bench, rec: Recorder, check: str, batch: int, harness: Any) -> None:
    """Raw diffusers (the loaded pipeline called directly) and the harness's sampler on one batch, interleaved."""
    from benchmark.api.sampling import initial_latents

    pipe, settings = b.model.pipe, b.sampler
    ours = Batch(b.texts(batch), list(range(batch)), settings).through(harness)

    def raw() -> None:
        latents = initial_latents(list(range(batch)), pipe, settings["height"], settings["width"])
        pipe(prompt=b.texts(batch), latents=latents.to(pipe.device, pipe.unet.dtype), output_type="pil", **settings)

    b.timed(raw), b.timed(ours)  # warm-up: first calls allocate and pick kernels
    raw_s, ours_s = [], []
    for _ in range(b.profile.repeats):  # interleaved, so load drifts affect both alike
        raw_s.append(b.timed(raw))
        ours_s.append(b.timed(ours))
    raw_ips, ours_ips = batch / statistics.median(raw_s), batch / statistics.median(ours_s)
    rec.add(check, "raw diffusers", raw_ips, "images/s",
            "batch / median seconds of StableDiffusionPipeline.__call__ on the loaded pipeline (PIL output)")
    rec.add(check, "harness", ours_ips, "images/s",
            "batch / median seconds of benchmark.api.sampling.draw through the undefended defense")
    rec.add(check, "harness / raw", ours_ips / raw_ips, "ratio",
            "harness images/s over raw diffusers images/s, same prompts, seeds and settings (1 = parity)",
            per_repeat=[round(r / o, 4) for r, o in zip(raw_s, ours_s, strict=True)])
    rec.detail[f"batch_{batch}"] = {"raw_seconds": raw_s, "harness_seconds": ours_s}


# ----------------------------------------------------------------------------------------------- 2. defenses
def inference_time_defenses() -> list[str]:
    """Registered inference-time defenses; SafeRedir (which trains its redirector first) last."""
    from benchmark.api.defense import DefenseKind
    from benchmark.api.registry import DEFENSES

    # built-ins only: tests register probe defenses in-process that a subprocess would not know
    names = [n for n in DEFENSES.builtin_names()
             if getattr(DEFENSES.get(n), "kind", None) is DefenseKind.INFERENCE_TIME]
    return sorted(names, key=lambda n: (n == "saferedir", n))


def build_defense(b: Bench, name: str) -> tuple[Any, str | None]:
    """(the defense with this check's options, why it cannot run here or None)."""
    from benchmark.api.component import CheckContext
    from benchmark.api.errors import UserError
    from benchmark.api.registry import DEFENSES

    cls = DEFENSES.get(name)
    options = dict(b.profile.saferedir_training) if name == "saferedir" else {}
    defense = cls(**options)
    if not defense.supports(b.model.name):
        return defense, f"{name} does not support model {b.model.name} (supported: {', '.join(cls.supported_models)})"
    try:
        defense.check_inputs(CheckContext(model=b.model.name, task=b.task))
    except UserError as error:
        return defense, f"{name} cannot run on task {b.task.name} here: {error}"
    return defense, None


def section_defenses(b: Bench, rec: Recorder) -> None:
    batch = Batch(b.texts(b.profile.overhead_batch), list(range(b.profile.overhead_batch)), b.sampler)
    b.timed(batch.through(b.undefended()))  # warm-up
    rec.detail["defenses"] = inference_time_defenses()
    for name in rec.detail["defenses"]:
        b.clock.check(f"defense {name}")
        check = f"defense overhead: {name}"
        with guarded(rec, check):
            defense, why_not = build_defense(b, name)
            if why_not is None and name == "saferedir" and b.clock.remaining() < b.profile.saferedir_min_s:
                why_not = (f"preparing SafeRedir trains its redirector first (the run's tiny budget); "
                           f"{b.clock.remaining():.0f} s of the time budget were left, under the "
                           f"{b.profile.saferedir_min_s:g} s it needs")
            if why_not:
                rec.skip(check, why_not)
                continue
            measure_defense(b, rec, check, defense, batch)


def measure_defense(b: Bench, rec: Recorder, check: str, defense: Any, batch: Batch) -> None:
    """Prepare (timed), apply, then interleaved batches through the undefended and the defended sampler."""
    from benchmark.api.defense import PrepareContext

    name = defense.name
    artifact = b.scratch / f"prepare-{name}"
    artifact.mkdir(parents=True, exist_ok=True)
    prepare_s = b.timed(lambda: defense.prepare(PrepareContext(b.model, b.task, artifact)))
    plain, defended = b.undefended(), defense.apply(b.model, b.task, artifact)
    try:
        b.timed(batch.through(defended))  # warm-up
        base, ours = [], []
        for _ in range(b.profile.overhead_repeats):
            base.append(b.timed(batch.through(plain)))
            ours.append(b.timed(batch.through(defended)))
            triggered = batch.triggered
    finally:
        defended.close()
    extra: dict[str, Any] = {"prepare_seconds": round(prepare_s, 3), "batch": len(batch.seeds),
                             "per_repeat": [round(o / p, 4) for p, o in zip(base, ours, strict=True)]}
    if any(t is not None for t in triggered):
        extra["triggered_fraction"] = sum(bool(t) for t in triggered) / len(triggered)
    if name == "saferedir":
        extra["redirector"] = (f"trained in this run at a tiny budget {b.profile.saferedir_training}: the "
                               "full-size network's cost; its decisions mean nothing")
    rec.add(check, f"{name} / undefended", statistics.median(ours) / statistics.median(base), "ratio",
            "median seconds of one batch through the defended sampler over the undefended sampler's "
            "(benchmark.api.sampling.draw, same prompts, seeds and settings, interleaved repeats)", **extra)


# ----------------------------------------------------------------------------------------------- 3. UnlearnDiff
def attack_context(b: Bench, defended: Any) -> Any:
    from benchmark.api.attack import AttackContext

    return AttackContext(model=b.model, defended=defended, task=b.task, judge=b.judge(), sampler=dict(b.sampler))


def clear_attack_caches() -> None:
    """Module-level caches the attacks share within a process: each measurement computes its own."""
    from attacks import concept_inversion
    from attacks._token_search import forget_targets

    forget_targets()
    concept_inversion._IMAGES.clear()
    concept_inversion._LEARNED.clear()


def section_unlearndiff_batching(b: Bench, rec: Recorder) -> None:
    from attacks.unlearndiff import UnlearnDiff

    prompts, iterations = b.prompts(b.profile.unlearndiff_prompts), b.profile.unlearndiff_iterations
    ctx = attack_context(b, b.undefended())

    def per_prompt_seconds(batch_size: int) -> float:
        clear_attack_caches()  # both arms draw their own targets
        attack = UnlearnDiff(iterations=iterations, check_every=iterations, early_stop=False, check_source=False,
                             batch_size=batch_size)
        outputs: list[Any] = []
        seconds = b.timed(lambda: outputs.extend(attack.run(prompts, ctx)))
        if not all(o.meta["iterations"] == iterations for o in outputs):
            raise RuntimeError("an UnlearnDiff prompt stopped early: the arms would not do the same work")
        return seconds / len(prompts)

    b.timed(lambda: UnlearnDiff(iterations=1, early_stop=False, check_source=False).run(prompts[:1], ctx))  # warm-up
    b.clock.check("UnlearnDiff batched")
    batched = per_prompt_seconds(len(prompts))
    b.clock.check("UnlearnDiff one prompt at a time")
    single = per_prompt_seconds(1)
    check = f"UnlearnDiff, {plural(len(prompts), 'prompt')} x {plural(iterations, 'iteration')}"
    common = {"prompts": len(prompts), "iterations": iterations, "defense": "none"}
    rec.add(check, "batched", batched, "s/prompt",
            f"seconds per prompt with all {len(prompts)} prompts optimised in one batch (target generation, "
            "iterations and one final judged check each; no early stop, no source check)", **common)
    rec.add(check, "one at a time", single, "s/prompt", "the same work with batch_size 1", **common)
    rec.add(check, "one at a time / batched", single / batched, "ratio",
            "seconds per prompt one at a time over batched (the speed-up of batching)", **common)
    clear_attack_caches()


# ----------------------------------------------------------------------------------------------- 4. ESD
def section_esd(b: Bench, rec: Recorder) -> None:
    from benchmark.api.registry import DEFENSES
    from defenses.esd import train_esd

    defense = DEFENSES.get("esd-x")()
    settings = defense.preset_values(b.model.name)
    ddim_steps = b.profile.esd_ddim_steps or settings["ddim_steps"]
    o, n = defense.options, b.profile.esd_iterations

    def train(iterations: int) -> None:
        train_esd(b.model.pipe, defense.prompts(b.task), method="x", eta=o.eta, lr=settings["lr"],
                  iterations=iterations, ddim_steps=ddim_steps, sample_guidance=o.sample_guidance,
                  batch_size=o.batch_size, seed=o.seed)

    train(1)  # warm-up
    one = b.timed(lambda: train(1))
    b.clock.check("ESD-x timed iterations")
    with b.peak_memory() as box:
        more = b.timed(lambda: train(1 + n))
    check = f"ESD-x training, DDIM {plural(ddim_steps, 'step')}"
    per_iteration = (more - one) / n
    rec.add(check, "step time", per_iteration, "s/iteration",
            f"(seconds of 1 + {n} iterations - seconds of 1) / {n}, same seed, so setup (the UNet copy) cancels; "
            f"each iteration first samples a uniform random number of the {ddim_steps} DDIM steps, so a few "
            "iterations give a noisy mean", iterations=n, ddim_steps=ddim_steps)
    rec.add(check, "full training, projected", per_iteration * settings["iterations"], "s",
            f"step time x the defense's default {settings['iterations']} iterations on this model",
            iterations=settings["iterations"])
    add_memory(rec, check, box, "torch.cuda.max_memory_allocated during the timed training (the model, the fp32 "
               "student copy, Adam's state and the activations)")


# ----------------------------------------------------------------------------------------------- 5. memory
def ring_a_bell_pairs(b: Bench) -> Path:
    """A small Ring-A-Bell pairs CSV (prompt with the concept, the same without) for the concept vector."""
    path = b.scratch / "ring-a-bell-pairs.csv"
    concept = ", ".join(b.task.concept_words) or "the concept"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case_number", "prompt", "prompt1"])
        for i, text in enumerate(b.texts(8)[::2]):
            writer.writerow([i, f"{text}, {concept}", text])
    return path


def section_memory(b: Bench, rec: Recorder) -> None:
    plain = b.undefended()
    settings = {**b.sampler, "num_inference_steps": b.profile.memory_steps}
    for batch in b.profile.memory_batches:
        b.clock.check(f"sampling memory at batch {batch}")
        check = f"sampling, batch {batch}"
        with guarded(rec, check):
            sample = Batch(b.texts(batch), list(range(batch)), settings).through(plain)
            with b.peak_memory() as box:
                sample()
            add_memory(rec, check, box, "torch.cuda.max_memory_allocated over one batch through the undefended "
                       f"sampler ({settings['height']} x {settings['width']}, VAE decode included)")
    prompts = b.prompts(b.profile.attack_prompts)
    for name in ATTACKS_MEASURED:
        b.clock.check(f"attack {name}")
        check = f"attack {name}, {plural(len(prompts), 'prompt')}"
        with guarded(rec, check):
            measure_attack(b, rec, check, name, prompts, plain)


def measure_attack(b: Bench, rec: Recorder, check: str, name: str, prompts: list[Any], plain: Any) -> None:
    """One attack at its tiny budget on the undefended model: seconds and peak memory."""
    from benchmark.api.attack import check_outputs
    from benchmark.api.component import CheckContext
    from benchmark.api.errors import UserError
    from benchmark.api.registry import ATTACKS

    if name not in ATTACKS:
        rec.skip(check, f"attack {name} is not registered")
        return
    options = dict(b.profile.attack_options.get(name, {}))
    if name == "ring-a-bell":
        options["pairs"] = str(ring_a_bell_pairs(b))
    attack = ATTACKS.get(name)(**options)
    try:
        attack.check_inputs(CheckContext(model=b.model.name, task=b.task))
    except UserError as error:
        rec.skip(check, f"{name} cannot run on task {b.task.name} here: {error}")
        return
    ctx = attack_context(b, plain)
    clear_attack_caches()
    outputs: list[Any] = []
    with oom_backoffs() as halvings, b.peak_memory() as box:
        seconds = b.timed(lambda: outputs.extend(attack.run(prompts, ctx)))
    check_outputs(attack, prompts, outputs)
    clear_attack_caches()
    add_memory(rec, check, box, "torch.cuda.max_memory_allocated over the attack's run on the undefended model at "
               "the tiny budget given (its other options, batch sizes included, are its preset's)",
               options={k: v for k, v in options.items() if k != "pairs"}, seconds=round(seconds, 3),
               oom_backoffs=halvings)


def oom_backoffs() -> contextlib.AbstractContextManager[list[dict[str, Any]]]:
    """The harness's record of out-of-memory halvings within the block (a peak measured after one is the
    smaller batch's), where this version of the harness has it; else an empty list."""
    from benchmark.api import memory

    recording = getattr(memory, "recording_backoffs", None)
    return recording() if recording is not None else contextlib.nullcontext([])


SECTIONS: dict[str, tuple[str, Callable[[Bench, Recorder], None]]] = {
    "throughput": ("Harness vs raw diffusers throughput", section_throughput),
    "defenses": ("Inference-time defense overhead", section_defenses),
    "unlearndiff_batching": ("UnlearnDiff batched vs one prompt at a time", section_unlearndiff_batching),
    "esd": ("ESD-x step time", section_esd),
    "memory": ("Peak memory per sampling batch and per attack", section_memory),
}


def run_section(name: str, b: Bench | None, clock: Clock, load_error: str | None) -> dict[str, Any]:
    title, fn = SECTIONS[name]
    rec = Recorder(name, title)
    began = time.perf_counter()
    status, extra = "ok", {}
    if load_error is not None:
        status, extra = "skipped", {"skipped": load_error}
    elif clock.remaining() <= 0:
        status, extra = "skipped", {"skipped": f"time budget of {clock.budget_s:g} s spent before this section "
                                               f"({clock.elapsed():.0f} s elapsed)"}
    else:
        log.info("section %s (%.0f s of the budget left)", name, clock.remaining())
        try:
            with clock.deadline():
                fn(b, rec)
        except BudgetExceededError as cut:
            status, extra = "cut", {"cut": f"{cut}; the figures before it are kept"}
        except Exception as error:  # noqa: BLE001 - recorded; the next section runs
            status = "error"
            extra = {"error": describe(error), "out_of_memory": out_of_memory(error),
                     "traceback": traceback.format_exc()[-3000:]}
            log.error("section %s failed: %s", name, describe(error))
        finally:
            from benchmark.api.memory import release_cached_memory

            release_cached_memory()
    return {"title": title, "status": status, "seconds": round(time.perf_counter() - began, 3), **extra,
            "figures": rec.figures, "detail": rec.detail}


# ----------------------------------------------------------------------------------------------- environment
def environment(device: torch.device, commit: str | None) -> dict[str, Any]:
    from benchmark.harness.provenance import git_commit, package_versions

    packages = package_versions()
    for name in EXTRA_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    git = git_commit()
    if commit:
        git = {"commit": commit, "dirty": None, "given": "--commit"}
    env: dict[str, Any] = {"device": str(device), "python": sys.version.split()[0], "platform": platform.platform(),
                           "torch_threads": torch.get_num_threads(), "packages": packages, "git": git,
                           "cuda": torch.version.cuda, "device_name": platform.processor() or platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=torch.cuda.get_device_name(device), device_memory_gib=gib(props.total_memory),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    return env


# ----------------------------------------------------------------------------------------------- output
def fmt(figure: dict[str, Any]) -> str:
    for key in ("skipped", "error"):
        if key in figure:
            return f"{key}: {figure[key]}".replace("|", "/")
    value = figure["value"]
    if value is None:
        reason = "cpu run: no CUDA allocator" if figure.get("reason") == CPU_MEMORY else figure.get("reason")
        return f"n/a ({reason or 'no value'})".replace("|", "/")
    unit = figure["unit"]
    if unit == "ratio":
        return f"{value:.2f}x"
    if unit == "GiB":
        return f"{value:.2f} GiB"
    if unit == "images/s":
        return f"{value:.2f} images/s"
    return f"{value:.3g} {unit}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def markdown(result: dict[str, Any], json_path: Path) -> str:
    """The results as a Markdown table (one row per figure; skips and errors with their reasons)."""
    s, env = result["settings"], result["environment"]
    pk = env["packages"]
    commit = (env["git"].get("commit") or "unknown")[:10]
    # A GPU result's home is benchmarks/results/ (where the README points); a --tiny one stays where it was written.
    where = f"benchmarks/results/{json_path.name}" if result["mode"] == "gpu" else str(json_path)
    lines = [
        f"Measured {result['date']} on {env['device_name']} ({env['device']}) by `python benchmarks/gpu_check.py"
        f"{' --tiny' if result['mode'] == 'tiny' else ''}`: {s['model']} ({s['dtype']}, {s['height']} x "
        f"{s['width']}, {plural(s['steps'], 'step')}, guidance {s['guidance_scale']}), task {s['task']}; torch "
        f"{pk.get('torch')}, diffusers {pk.get('diffusers')}, commit {commit}. Ratios are measured within this one "
        f"run; each figure's definition is in `{where}`.",
        "",
        "| check | figure | value |",
        "|---|---|---|",
    ]
    order = list(SECTIONS)
    for _, sec in sorted(result["sections"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        if sec["status"] in ("skipped", "error") and not sec["figures"]:
            lines.append(f"| {sec['title']} | - | {sec['status']}: {sec.get('skipped') or sec.get('error')} |")
            continue
        for f in sec["figures"]:
            lines.append(f"| {f['check']} | {f['figure']} | {fmt(f)} |")
        if sec["status"] in ("cut", "error"):
            lines.append(f"| {sec['title']} | (rest) | {sec['status']}: {sec.get('cut') or sec.get('error')} |")
    for note in result.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines)


def replace_readme_block(text: str, block: str) -> str:
    """``text`` with everything between the gpu-check markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"the README has no {BEGIN} ... {END} block to replace")
    return f"{text[:start + len(BEGIN)]}\n{block.strip()}\n{text[end:]}"


def output_path(out: str, mode: str, date: str) -> Path:
    path = Path(out)
    if path.suffix == ".json":
        return path
    return path / f"{'gpu' if mode == 'gpu' else 'tiny'}-{date}.json"


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(result, indent=1, default=str) + "\n")
    scratch.replace(path)


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU plumbing run: tiny-random, fp32, tiny budgets (seconds)")
    for name, what in (("device", "torch device"), ("model", "registered model"),
                       ("task", "task whose concept words the defenses and attacks use")):
        ap.add_argument(f"--{name}", help=f"{what} (default: {getattr(GPU, name)}; {getattr(TINY, name)} with --tiny)")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help=f"default: {GPU.dtype} ({TINY.dtype} with --tiny)")
    ap.add_argument("--steps", type=int, help=f"sampler steps of the timed generations (default: {GPU.steps}; "
                    f"{TINY.steps} with --tiny)")
    ap.add_argument("--batches", help="throughput batch sizes, comma-separated (default: "
                    f"{','.join(map(str, GPU.batches))}; {','.join(map(str, TINY.batches))} with --tiny)")
    ap.add_argument("--repeats", type=int, help=f"timed repeats per throughput batch, after a warm-up (default: "
                    f"{GPU.repeats}; {TINY.repeats} with --tiny)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: 1 with --tiny, which on a busy machine "
                    "runs many times faster than oversubscribed threads; torch's own default otherwise)")
    ap.add_argument("--prompt-set", default="toy-attack", help="prompts (cycled; a shipped set needs no data dir)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"sections to run, in this order (default: all: {','.join(SECTIONS)})")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="global time budget in seconds from the start; what is left is skipped (default 420)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                    help="folder for gpu-<date>.json (tiny-<date>.json with --tiny), or a .json path")
    ap.add_argument("--readme", type=Path, help="replace the README's gpu-check block with the table")
    ap.add_argument("--from-json", type=Path, help="measure nothing: print (and --readme) the table of a results file")
    ap.add_argument("--commit", help="git commit to record where the checkout has no .git (a copied tree)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log the harness's progress")
    args = ap.parse_args(argv)
    unknown = [s for s in args.sections.split(",") if s and s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def resolve_profile(args: argparse.Namespace) -> Profile:
    base = TINY if args.tiny else GPU
    changes: dict[str, Any] = {k: getattr(args, k) for k in ("device", "model", "task", "dtype", "steps", "repeats")
                               if getattr(args, k) is not None}
    if args.batches:
        changes["batches"] = tuple(int(x) for x in args.batches.split(","))
    return dataclasses.replace(base, **changes)


def earlier_sections(path: Path, mode: str, chosen: list[str], notes: list[str]) -> dict[str, Any]:
    """A run of some sections into an existing results file keeps that file's other sections (noted), so that
    a rerun of what a first run lost completes it."""
    if set(chosen) >= set(SECTIONS) or not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("mode") != mode:
        return {}
    kept = {name: sec for name, sec in earlier.get("sections", {}).items() if name not in chosen}
    if kept:
        notes.append(f"sections {', '.join(kept)} are kept from the earlier run in this file "
                     f"(total {earlier.get('total_seconds')} s, commit {earlier['environment']['git'].get('commit')})")
    return kept


def finish(result: dict[str, Any], path: Path, readme: Path | None) -> None:
    table = markdown(result, path)
    print(table)
    if readme is not None:
        readme.write_text(replace_readme_block(readme.read_text(), table))
        print(f"\n{readme}: the gpu-check block now holds this table", file=sys.stderr)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        finish(result, args.from_json, args.readme)
        return result
    clock = Clock(args.budget_s)
    profile = resolve_profile(args)
    device = torch.device(profile.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; on a CPU run the plumbing check: --tiny")
    if device.type == "cpu" and profile.model == "sd14-shaped":
        sys.exit("gpu_check: sd14-shaped on the CPU takes 13 GB and minutes per image; use --tiny there")
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    mode = "tiny" if args.tiny else "gpu"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    path = output_path(args.out, mode, date)
    d = None
    result: dict[str, Any] = {
        "schema": SCHEMA, "script": "benchmarks/gpu_check.py", "mode": mode, "date": date, "command": sys.argv,
        "note": ("every figure is measured within this one run; compare ratios across machines, not wall times. "
                 "sd14-shaped has SD-1.4's architecture with random weights: costs are real, images are noise"),
        "environment": environment(device, args.commit), "settings": {}, "budget_s": args.budget_s, "notes": [],
        "sections": {},
    }
    bench, load_error = None, None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        try:
            clock.check("loading the model")
            import attacks  # noqa: F401  (registers the attacks)
            import defenses  # noqa: F401  (registers the defenses)
            from benchmark.api.model import DTYPES, get_model_spec
            from benchmark.api.registry import TASKS

            began = time.perf_counter()
            model = get_model_spec(profile.model).load(device, DTYPES[profile.dtype])
            model.pipe.set_progress_bar_config(disable=True)
            result["model_load_seconds"] = round(time.perf_counter() - began, 3)
            result["model"] = model.provenance
            bench = Bench(profile, model, TASKS.get(profile.task), device, clock, Path(scratch), args.prompt_set,
                          notes=result["notes"])
            d = model.defaults
        except BudgetExceededError as error:
            load_error = str(error)
        except Exception as error:  # noqa: BLE001 - every section records why it did not run
            load_error = f"the model or the harness did not load: {describe(error)}"
            result["load_traceback"] = traceback.format_exc()[-3000:]
        result["settings"] = {**dataclasses.asdict(profile), "prompt_set": args.prompt_set,
                              "height": d.height if d else None, "width": d.width if d else None,
                              "guidance_scale": d.guidance_scale if d else None}
        chosen = [s for s in args.sections.split(",") if s]
        result["sections"] = earlier_sections(path, mode, chosen, result["notes"])
        for name in chosen:
            result["sections"][name] = run_section(name, bench, clock, load_error)
            result["total_seconds"] = round(clock.elapsed(), 3)
            write_json(path, result)
        write_json(path, result)
    print(f"wrote {path}", file=sys.stderr)
    finish(result, path, args.readme)
    return result


if __name__ == "__main__":
    main()
