"""Shared fixtures. No test touches the network: the hub is switched off for the whole session."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UNLEARN_ARENA_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m benchmark`` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd or REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def load_script(path: Path):
    """A script under ``benchmarks/`` imported as a module of its own name, to test its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def _sd_mini_loaded():
    import torch

    from benchmark.models.sd_mini import SdMiniModel

    return SdMiniModel().load(torch.device("cpu"), torch.float32)


def _fingerprint(model) -> list[float]:
    """Sum of each parameter of the pipeline's networks, in float64: any edit left behind changes it."""
    import torch

    with torch.no_grad():
        return [float(p.double().sum()) for net in (model.pipe.unet, model.pipe.text_encoder, model.pipe.vae)
                for p in net.parameters()]


@pytest.fixture(scope="module")
def sd_mini(_sd_mini_loaded, request):
    """sd-mini's shipped pipeline, loaded once per session (fp32, CPU) and shared by the test modules that
    use it. A module must leave it as it found it (weight edits restored, hooks removed): checked after the
    module, so one module cannot silently change the model the next one tests."""
    before = _fingerprint(_sd_mini_loaded)
    yield _sd_mini_loaded
    assert _fingerprint(_sd_mini_loaded) == before, (
        f"{request.module.__name__} left the shared sd-mini pipeline's weights changed; restore them "
        "(weight-edit defenses restore on exiting their context), or load a private copy with SdMiniModel().load")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"third-party prompt files not present at {SHARED_DATA}")
    return SHARED_DATA


TINY_RUN = ["run", "--model", "tiny-random", "--task", "toy", "--defense", "none,negative-prompt",
            "--attack", "none", "--max-prompts", "4", "--max-benign", "3", "--steps", "3", "--batch-size", "4"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One finished tiny-random run, shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("runs")
    result = run_cli(*TINY_RUN, "--out", str(out))
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    return run_dir, result


def _task(name: str):
    from benchmark.api.registry import TASKS

    return TASKS.get(name)


TOY = _task("toy")  # the plumbing task (data file benchmark/tasks/toy.yaml)
NUDITY = _task("nudity")


# Float comparisons that hold on any CPU (issue 25). torch picks its kernels by CPU (ATEN_CPU_CAPABILITY:
# avx512, avx2, default) and splits reductions by thread count, so a float32 result computed on two
# machines, or along two code paths, agrees only up to rounding: about eps (2^-23, 1.2e-7) of the magnitudes
# involved per operation, growing like sqrt(n) over a sum of n terms. Such a result is compared with an
# absolute tolerance scaled to the reference's largest element: allclose's fixed atol=1e-8 fails elements
# near zero whose error comes from their large neighbours, and a per-element rtol means nothing for them.
# `ulps` covers the depth of the computation (layers, a solve's conditioning); every call site says why.
FP32_EPS = 2.0 ** -23
FP64_EPS = 2.0 ** -52


def float_tol(reference, *, terms: int = 1, ulps: float = 4.0, eps: float = FP32_EPS) -> float:
    """``ulps`` x ``eps`` x max|reference| x sqrt(``terms``): the rounding a result of that size may carry
    after reductions of ``terms`` products, whichever kernels and thread count computed it."""
    import torch

    reference = _as_float64(torch.as_tensor(reference).detach())
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return ulps * eps * scale * math.sqrt(terms)


def assert_close_fp(actual, expected, *, terms: int = 1, ulps: float = 4.0, eps: float = FP32_EPS,
                    scale=None, msg: str = "") -> None:
    """``actual`` equals ``expected`` up to :func:`float_tol` of ``scale`` (default: ``expected``), in max
    absolute difference; tensors, arrays and numbers alike; shapes must match and a NaN fails."""
    import torch

    a, e = (_as_float64(torch.as_tensor(v).detach().cpu()) for v in (actual, expected))
    assert a.shape == e.shape, f"{msg} shape {tuple(a.shape)} != {tuple(e.shape)}"
    tol = float_tol(e if scale is None else scale, terms=terms, ulps=ulps, eps=eps)
    diff = float((a - e).abs().max()) if a.numel() else 0.0
    assert diff <= tol, f"{msg} max |diff| {diff:.3g} > tolerance {tol:.3g} (ulps={ulps}, terms={terms})"


def _as_float64(tensor):
    import torch

    return tensor.to(torch.complex128) if tensor.is_complex() else tensor.double()


# -- a weight-edit test double, shared by the white-box attack tests ---------------------------------------
def scale_defense():
    """A weight-edit defense that scales the shared UNet's output convolution by 3 and undoes it on close:
    the attacks' undefended side (targets, training images) must not see it. Built on call, so importing
    conftest stays light."""
    import torch

    from benchmark.api import DefendedPipeline, Defense, DefenseKind

    class ScaledUNet(DefendedPipeline):
        def __init__(self, model, defense, task):
            super().__init__(model, defense, task)
            self.saved = model.pipe.unet.conv_out.weight.detach().clone()
            with torch.no_grad():
                model.pipe.unet.conv_out.weight.mul_(3.0)

        def close(self):
            with torch.no_grad():
                self.pipe.unet.conv_out.weight.copy_(self.saved)

    class ScaleDefense(Defense):
        kind = DefenseKind.WEIGHT_EDIT

        def apply(self, model, task, artifact_dir):
            return ScaledUNet(model, self, task)

    return ScaleDefense()
