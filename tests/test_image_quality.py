"""FD / KID / CMMD (benchmark.image_quality): worked values, unbiasedness, intervals, and the report rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from PIL import Image

from benchmark.api.errors import JudgeLoadError
from benchmark.image_quality import (
    BootstrapOptions,
    FeatureSetError,
    bootstrap,
    cmmd,
    frechet_distance,
    kid,
    quality_estimates,
)
from benchmark.judges.features import INCEPTION_WEIGHTS_URL, inception_weights_path
from benchmark.metrics import Estimate
from reports.board import NO_ATTACK, board_frame, board_row
from reports.compare import CompareOptions, _distance_difference
from reports.leaderboard import render_markdown
from reports.quality import quality_rows


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices gain nothing from threads, and on a busy CI machine torch's thread pool makes a
    bootstrap's thousands of small ops ~40x slower; restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _standardised(n: int, d: int, seed: int) -> torch.Tensor:
    """n x d with column means exactly 0 and sample covariance (n - 1) exactly the identity."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    q, _ = torch.linalg.qr(z)  # orthonormal columns, still centred (they span z's centred columns)
    return q * math.sqrt(n - 1)


def _scipy_fd(x: np.ndarray, y: np.ndarray) -> float:
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_fd_of_1d_gaussians_is_the_closed_form():
    z = _standardised(50, 1, 0)
    x, y = 1.0 + 2.0 * z, -0.5 + 0.5 * _standardised(80, 1, 1)
    # (mu1 - mu2)^2 + s1^2 + s2^2 - 2 s1 s2 = 2.25 + 4 + 0.25 - 2 = 4.5
    assert frechet_distance(x, y) == pytest.approx(4.5, rel=1e-9)


def test_fd_of_diagonal_gaussians_is_the_closed_form():
    x = torch.tensor([0.0, 1.0]) + _standardised(40, 2, 2) * torch.tensor([1.0, 3.0])
    y = torch.tensor([2.0, 1.0]) + _standardised(40, 2, 3) * torch.tensor([2.0, 1.0])
    # per axis (mu diff)^2 + (s1 - s2)^2: axis 0: 4 + 1, axis 1: 0 + 4
    assert frechet_distance(x, y) == pytest.approx(9.0, rel=1e-9)


def test_fd_matches_scipy_sqrtm_on_a_correlated_2d_case():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 2)) @ np.array([[1.0, 0.8], [0.0, 0.6]])
    y = rng.normal(size=(25, 2)) @ np.array([[0.5, -0.3], [0.2, 1.5]]) + np.array([0.3, -1.0])
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(_scipy_fd(x, y), rel=1e-9)


@pytest.mark.parametrize("n", [20, 120])  # fewer images than dimensions (singular covariances) and more
def test_fd_matches_torchmetrics_fid_with_a_passthrough_extractor(n):
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Passthrough(torch.nn.Module):
        num_features = 64

        def forward(self, features):
            return features

    gen = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, 64, generator=gen), torch.randn(n, 64, generator=gen) * 1.3 + 0.2
    metric = FrechetInceptionDistance(feature=Passthrough())
    metric.update(x.double(), real=True)
    metric.update(y.double(), real=False)
    assert frechet_distance(x, y) == pytest.approx(float(metric.compute()), rel=1e-5)


def test_fd_is_zero_on_identical_sets_and_rejects_bad_shapes():
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(FeatureSetError, match="at least 2"):
        frechet_distance(x[:1], x)
    with pytest.raises(FeatureSetError, match="same width"):
        frechet_distance(x, x[:, :3])


def test_kid_is_unbiased_on_two_samples_of_one_distribution():
    # the unbiased MMD^2 averages to 0 over independent pairs of samples of one distribution (a biased
    # estimator would sit at ~ 2/n x the kernel's variance, far above this tolerance)
    values = []
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        values.append(kid(torch.randn(60, 8, generator=gen), torch.randn(60, 8, generator=gen)))
    mean, se = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    shifted = kid(torch.randn(60, 8), torch.randn(60, 8) + 1.0)
    assert abs(mean) < 3 * se and shifted > 50 * se


@pytest.mark.numeric
def test_kid_matches_torchmetrics_on_one_full_subset():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Passthrough(torch.nn.Module):
        def forward(self, features):
            return features

    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(40, 16, generator=gen), torch.randn(40, 16, generator=gen) + 0.3
    metric = KernelInceptionDistance(feature=Passthrough(), subsets=3, subset_size=40)
    metric.update(x, real=True)
    metric.update(y, real=False)
    reference, _ = metric.compute()
    # torchmetrics sums the kernel (values up to ~22) in float32, we in float64: measured 3-5e-7 apart relative
    # (~0.07 eps32 of the largest kernel value) on AVX-512, AVX2 and default kernels; rel 1e-5 keeps 20x
    assert kid(x, y) == pytest.approx(float(reference), rel=1e-5)


def test_cmmd_equals_a_hand_computation_on_three_points():
    x = torch.tensor([[0.0, 0.0], [6.0, 8.0]])  # squared distance 100
    y = torch.tensor([[0.0, 10.0]])  # 100 from the first point, 36 + 4 = 40 from the second
    k_xx = (1 + 1 + 2 * math.exp(-100 / 200)) / 4  # diagonal included (biased estimator)
    k_xy = (math.exp(-100 / 200) + math.exp(-40 / 200)) / 2
    assert cmmd(x, y) == pytest.approx(1000 * (k_xx + 1 - 2 * k_xy), rel=1e-9)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(30, 16, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(x + 0.5 * torch.randn(30, 16, generator=gen), dim=-1)
    options = BootstrapOptions(resamples=100, seed=1)
    estimates = quality_estimates(x, y, options)
    for name, e in estimates.items():
        assert e.n == 30, name
        assert e.ci_low <= e.value <= e.ci_high and e.ci_high > e.ci_low, (name, e)
    assert estimates["fd"].value > 0 and estimates["cmmd"].value > 0
    assert quality_estimates(x, y, options) == estimates  # same seed, same interval
    same = bootstrap(frechet_distance, x, x, options, floor=0.0)
    assert (same.value, same.ci_low, same.ci_high) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    with pytest.raises(ValueError, match="resamples"):
        BootstrapOptions(resamples=1)


def test_inception_weights_missing_offline_says_what_to_download(tmp_path):
    with pytest.raises(JudgeLoadError, match="curl -L -o") as error:
        inception_weights_path(tmp_path / "absent.pth")
    assert INCEPTION_WEIGHTS_URL in str(error.value)


class _MeanColour:
    """A stand-in extractor: per-channel mean and std of the pixels (plumbing only, not a real feature)."""

    name = "mean-colour"
    identity = "mean-colour:1"

    def __init__(self):
        self.calls = 0

    def features(self, images):
        self.calls += len(images)
        arrays = [np.asarray(image, dtype=np.float32) / 255 for image in images]
        return torch.tensor(np.stack([np.concatenate([a.mean((0, 1)), a.std((0, 1))]) for a in arrays]))


def _benign_run(root: Path, n: int = 12) -> pd.DataFrame:
    """Records of benign images of defenses none, same (identical images) and dark (darker images)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = rng.integers(60, 200, size=(8, 8, 3), dtype=np.uint8)
        for defense, image in [("none", pixels), ("same", pixels), ("dark", pixels // 3)]:
            path = f"cells/generate/{defense[:2]}/{defense}-{i}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / path)
            for judge_role in ("concept", "utility"):  # two records per image: the image counts once
                rows.append({"model": "toy", "task": "t", "defense": defense, "role": "benign",
                             "prompt_id": str(i), "image_index": 0, "image_path": path, "judge_role": judge_role})
    return pd.DataFrame(rows)


def test_report_rows_have_n_and_intervals_and_features_are_cached(tmp_path):
    records = _benign_run(tmp_path)
    extractor = _MeanColour()
    rows = quality_rows(records, tmp_path, extractors=lambda model: (extractor, extractor),
                        options=BootstrapOptions(resamples=50))
    board = board_frame(rows).set_index(["defense", "metric"])
    assert set(board.index) == {(d, m) for d in ("same", "dark") for m in ("fd", "kid", "cmmd")}
    assert (board["n"] == 12).all() and (board["attack"] == NO_ATTACK).all()
    for metric in ("fd", "kid", "cmmd"):
        if metric != "kid":  # unbiased KID of a set with itself is slightly negative (diagonal in k_xy only)
            assert board.loc[("same", metric), "value"] == pytest.approx(0.0, abs=1e-9)
        assert board.loc[("same", metric), "value"] < board.loc[("dark", metric), "value"]
        dark = board.loc[("dark", metric)]
        assert dark["ci_low"] <= dark["value"] <= dark["ci_high"] and dark["value"] > 1e-4
    assert extractor.calls == 36  # each of the 36 images once: the reference is embedded once, then cached
    again = quality_rows(records, tmp_path, extractors=lambda model: (extractor, extractor),
                         options=BootstrapOptions(resamples=50))
    assert extractor.calls == 36 and again == rows  # re-rendering reads the cached features
    text = render_markdown(board_frame(rows))
    assert "| FD | KID | CMMD |" in text and "n=12" in text and "CMMD = 1000 x MMD^2" in text


def test_missing_extractor_weights_leave_the_rows_out(tmp_path, caplog):
    def offline(model):
        raise JudgeLoadError("no weights: download them")

    assert quality_rows(_benign_run(tmp_path, 3), tmp_path, extractors=offline) == []
    assert "no weights: download them" in caplog.text


def test_compare_flags_a_significant_distance_rise():
    base = Estimate(1.0, 50, 0.8, 1.2)
    worse = _distance_difference("m", "t", "d", "fd", base, Estimate(3.0, 50, 2.7, 3.3), 1.959963984540054,
                                 CompareOptions())
    assert worse.regression and worse.diff == pytest.approx(2.0) and "fd rose" in worse.reason
    assert worse.low == pytest.approx(2.0 - math.hypot(0.2, 0.3))
    better = _distance_difference("m", "t", "d", "fd", base, Estimate(0.5, 50, 0.4, 0.6), 1.959963984540054,
                                  CompareOptions())
    assert not better.regression and better.diff == pytest.approx(-0.5)


def test_clip_mini_features_are_unit_norm_and_separate_colours():
    from benchmark.judges.features import ClipMiniFeatures

    try:
        extractor = ClipMiniFeatures()
    except JudgeLoadError as error:
        pytest.skip(f"sd-mini CLIP weights unavailable: {error}")
    images = [Image.new("RGB", (64, 64), colour) for colour in ["red"] * 4 + ["blue"] * 4]
    features = extractor.features(images)
    assert features.shape == (8, 128)
    assert torch.allclose(features.norm(dim=-1), torch.ones(8), atol=1e-5)
    reds, blues = features[:4], features[4:]
    assert cmmd(reds, reds[[1, 0, 3, 2]]) == pytest.approx(0.0, abs=1e-6)
    assert cmmd(reds, blues) > 0.1


def test_kid_over_subsets_agrees_with_the_full_set_estimate():
    # torchmetrics' procedure (mean over random subsets) and the full-set U-statistic estimate the same MMD^2
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(300, 8, generator=gen), torch.randn(300, 8, generator=gen) + 0.5
    full = kid(x, y)
    assert kid(x, y, subsets=50, subset_size=100) == pytest.approx(full, rel=0.1)
    assert kid(x, y, subsets=50, subset_size=100) == kid(x, y, subsets=50, subset_size=100)  # seeded
    assert kid(x[:250], y) == pytest.approx(full, rel=0.1)  # unequal sets: subsets of min(n1, n2)


def test_scatter_can_put_a_distance_on_the_utility_axis():
    from reports import plots
    from reports.tables import build_tables

    rows = []
    for defense, fd, worst in [("none", math.nan, 0.9), ("a", 1.0, 0.2), ("b", 3.0, 0.1), ("c", 4.0, 0.5)]:
        rows.append(board_row("m", "t", defense, "*", "worst_case_asr", Estimate(worst, 10, worst - 0.1, worst + 0.1)))
        if not math.isnan(fd):
            rows.append(board_row("m", "t", defense, NO_ATTACK, "fd", Estimate(fd, 10, fd - 0.5, fd + 0.5)))
    tables = build_tables(board_frame(rows))
    figure = plots.scatter(tables, utility="fd")
    assert figure is not None and "FD" in figure.axes[0].get_xlabel()
    # lower FD is better: a (least change) and b (lowest ASR) are on the front, c is dominated by both
    assert plots.pareto_front([("a", -1.0, 20), ("b", -3.0, 10), ("c", -4.0, 50)]) == ["a", "b"]
    front_x = sorted(figure.axes[0].lines[-1].get_xdata())
    assert front_x == [1.0, 3.0]
