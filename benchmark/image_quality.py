"""Image-set distances as papers report them: FD (FID), KID and CMMD, on feature sets, with bootstrap intervals.

Every function takes two feature matrices ``x`` (n1, d) and ``y`` (n2, d) (one row per image) and knows
nothing about images or extractors (those are in :mod:`benchmark.judges.features`).

* **FD** (Frechet distance; **FID** when the features are Inception-v3 pool3, Heusel et al. 2017):
  ``||mu_x - mu_y||^2 + tr(S_x) + tr(S_y) - 2 tr((S_x S_y)^(1/2))`` with sample covariances (n - 1), as
  ``torchmetrics.image.FrechetInceptionDistance`` computes it. The trace term is the nuclear norm of
  ``A B^T / sqrt((n1-1)(n2-1))`` (``A``, ``B`` the centred features): the non-zero eigenvalues of
  ``S_x S_y = A^T A B^T B / c`` are those of ``(A B^T)(A B^T)^T / c``. Exact and real; with more images
  than dimensions the same trace is ``||S_x^1/2 S_y^1/2||_*`` (d x d), so each bootstrap replicate costs
  one min(n, d)-sized SVD. The tests check both forms against torchmetrics and scipy.
* **KID** (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  ``k(a, b) = (a.b / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size`` images of each
  set (torchmetrics' defaults: 100 subsets of 1000; fewer images than that: one subset of min(n1, n2)).
  The kernel and the estimator are ``torchmetrics.image.kid.poly_mmd``.
* **CMMD** (Jayasumana et al. 2024, "Rethinking FID", arXiv:2401.09603): ``1000 * MMD^2`` with the Gaussian
  RBF kernel ``exp(-||a - b||^2 / (2 sigma^2))``, ``sigma = 10``, on L2-normalised CLIP image embeddings
  (the paper's model is CLIP ViT-L/14 at 336 px), with the minimum-variance (biased, diagonal included)
  estimator of Gretton et al. 2012 Eq. 5. Constants and estimator from the authors' code,
  google-research/google-research ``cmmd/distance.py`` (``_SIGMA = 10``, ``_SCALE = 1000``); torchmetrics
  has no CMMD, so it is written here.
* **Interval**: 95% bootstrap over images: ``resamples`` draws of the images with replacement (paired:
  the same indices in both sets when they are matched image for image, as defended vs undefended images of
  the same prompt and seed are); the interval is the 2.5 / 97.5 percentiles of the replicates, shifted so
  that their median is the point estimate. Why shifted: these distances are biased at small n (FD most),
  and resampling with replacement (duplicated images) moves the replicates further, so a plain percentile
  interval can miss the estimate itself. FD and CMMD are never negative and their bounds are clipped at 0;
  KID is unbiased and may be negative. n is min(n1, n2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchmetrics.image.kid import poly_mmd

from benchmark.metrics import Estimate

CMMD_SIGMA = 10.0  # google-research cmmd/distance.py _SIGMA
CMMD_SCALE = 1000.0  # google-research cmmd/distance.py _SCALE
KID_SUBSETS = 100  # torchmetrics KernelInceptionDistance defaults
KID_SUBSET_SIZE = 1000
BOOTSTRAP_RESAMPLES = 200

QUALITY_METRICS = ("fd", "kid", "cmmd")

#: one line per metric, for the reports' definitions
QUALITY_DEFINITIONS = {
    "fd": "FD: Frechet distance ||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) between the feature sets (FID when "
          "the features are Inception-v3's)",
    "kid": "KID: unbiased MMD^2 with the kernel (a.b/d + 1)^3, mean over subsets of up to 1000 images "
           "(torchmetrics)",
    "cmmd": "CMMD: 1000 x MMD^2 (biased estimator) with a Gaussian RBF kernel, sigma 10, on L2-normalised CLIP "
            "image embeddings (Jayasumana et al. 2024)",
}


class FeatureSetError(ValueError):
    """Feature sets that cannot be compared (too few rows, different widths)."""


def _check(x: torch.Tensor, y: torch.Tensor, minimum: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise FeatureSetError(f"need two (n, d) feature matrices of the same width d, got {tuple(x.shape)} "
                              f"and {tuple(y.shape)}")
    if len(x) < minimum or len(y) < minimum:
        raise FeatureSetError(f"need at least {minimum} images in each set, got {len(x)} and {len(y)}: "
                              "generate more benign images (--max-benign)")
    return x.double(), y.double()


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """FD between the Gaussians fitted to ``x`` and ``y`` (see the module docstring)."""
    x, y = _check(x, y)
    a, b = x - x.mean(0), y - y.mean(0)
    scale = math.sqrt((len(x) - 1) * (len(y) - 1))
    mean_term = (x.mean(0) - y.mean(0)).square().sum()
    traces = a.square().sum() / (len(x) - 1) + b.square().sum() / (len(y) - 1)
    if min(len(x), len(y)) <= x.shape[1]:
        cross = torch.linalg.matrix_norm(a @ b.T / scale, ord="nuc")
    else:  # more images than dimensions: the same trace from d x d factors, ||S_x^1/2 S_y^1/2||_*
        cross = torch.linalg.matrix_norm(_psd_sqrt(a.T @ a / (len(x) - 1)) @ _psd_sqrt(b.T @ b / (len(y) - 1)),
                                         ord="nuc")
    return float((mean_term + traces - 2 * cross).clamp_min(0))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def kid(x: torch.Tensor, y: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        generator: torch.Generator | None = None) -> float:
    """KID: mean unbiased polynomial-kernel MMD^2 over random equal-size subsets (torchmetrics' procedure)."""
    x, y = _check(x, y)
    size = min(subset_size, len(x), len(y))
    if size == len(x) == len(y):  # every subset is the whole set: one evaluation is exact
        return float(poly_mmd(x, y))
    generator = generator or torch.Generator().manual_seed(0)
    values = [poly_mmd(x[torch.randperm(len(x), generator=generator)[:size]],
                       y[torch.randperm(len(y), generator=generator)[:size]]) for _ in range(subsets)]
    return float(torch.stack(values).mean())


def _rbf_mean(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    squared = (a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)
    return torch.exp(-squared / (2 * sigma**2)).mean()


def cmmd(x: torch.Tensor, y: torch.Tensor, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD: ``scale`` x the biased Gaussian-kernel MMD^2 (pass L2-normalised CLIP embeddings)."""
    x, y = _check(x, y, minimum=1)
    value = _rbf_mean(x, x, sigma) + _rbf_mean(y, y, sigma) - 2 * _rbf_mean(x, y, sigma)
    return float(scale * value.clamp_min(0))


Statistic = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass(frozen=True)
class BootstrapOptions:
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = 0
    paired: bool = True  # same indices in both sets (needs n1 == n2; rows matched image for image)

    def __post_init__(self) -> None:
        if self.resamples < 2:
            raise ValueError(f"bootstrap resamples must be >= 2, got {self.resamples}")


def bootstrap(statistic: Statistic, x: torch.Tensor, y: torch.Tensor, options: BootstrapOptions = BootstrapOptions(),
              floor: float | None = None) -> Estimate:
    """``statistic(x, y)`` with a 95% bootstrap interval (module docstring); ``floor`` clips the bounds."""
    value = statistic(x, y)
    generator = torch.Generator().manual_seed(options.seed)
    paired = options.paired and len(x) == len(y)
    replicates = []
    for _ in range(options.resamples):
        ix = torch.randint(len(x), (len(x),), generator=generator)
        iy = ix if paired else torch.randint(len(y), (len(y),), generator=generator)
        replicates.append(statistic(x[ix], y[iy]))
    draws = torch.tensor(replicates, dtype=torch.float64)
    shift = value - float(draws.median())
    low, high = (float(q) + shift for q in torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64)))
    if floor is not None:
        low, high = max(low, floor), max(high, floor)
    return Estimate(value, min(len(x), len(y)), low, high)


def quality_estimates(x: torch.Tensor, y: torch.Tensor, options: BootstrapOptions = BootstrapOptions(),
                      kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE,
                      clip_x: torch.Tensor | None = None, clip_y: torch.Tensor | None = None) -> dict[str, Estimate]:
    """FD, KID (on ``x``/``y``) and CMMD (on ``clip_x``/``clip_y``, default ``x``/``y``) with intervals.

    A bootstrap replicate of KID uses a tenth of ``kid_subsets`` (at least 1) to keep its cost bounded."""
    replicate_subsets = max(1, kid_subsets // 10)
    generator = torch.Generator().manual_seed(options.seed)

    def kid_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
        return kid(a, b, replicate_subsets, kid_subset_size, generator)

    kid_estimate = bootstrap(kid_statistic, x, y, options)
    kid_point = kid(x, y, kid_subsets, kid_subset_size)
    shift = kid_point - kid_estimate.value
    return {
        "fd": bootstrap(frechet_distance, x, y, options, floor=0.0),
        "kid": Estimate(kid_point, kid_estimate.n, kid_estimate.ci_low + shift, kid_estimate.ci_high + shift),
        "cmmd": bootstrap(cmmd, x if clip_x is None else clip_x, y if clip_y is None else clip_y, options,
                          floor=0.0),
    }
