"""Per-stage wall time and peak memory (benchmark.harness.stages.usage), as runs record them in the provenance."""

import time

import numpy as np
import pytest

from benchmark.harness.stages import StageCounter, cost_line
from benchmark.harness.stages.usage import StageUsage, resident_bytes

pytestmark = pytest.mark.skipif(resident_bytes() is None, reason="no /proc/self/statm on this platform")


def test_a_stage_that_allocates_shows_it_in_its_peak_and_not_in_the_others():
    usage = StageUsage(interval=0.01).start()
    big, small = StageCounter("generate"), StageCounter("judge")
    try:
        base = resident_bytes()
        with usage.measure(big):
            block = np.ones(300 * 2 ** 20 // 8)  # 300 MiB, touched, so resident
            time.sleep(0.1)
            del block
        with usage.measure(small):
            time.sleep(0.05)
    finally:
        usage.stop()
    assert big.peak_rss_bytes - base > 250 * 2 ** 20
    assert small.peak_rss_bytes < big.peak_rss_bytes - 200 * 2 ** 20  # the block was freed before
    assert big.seconds >= 0.1 and small.seconds >= 0.05
    assert big.cuda_peak_bytes is None  # not measured without CUDA: None, never 0


def test_seconds_add_up_over_intervals_and_nesting_keeps_the_outer_stage():
    usage = StageUsage(interval=0.01).start()
    outer, inner = StageCounter("attack"), StageCounter("generate")
    try:
        for _ in range(2):
            with usage.measure(outer):
                time.sleep(0.03)
        with usage.measure(outer):
            with usage.measure(inner):
                time.sleep(0.02)
            assert usage._current is outer  # back to the outer stage after the inner one
    finally:
        usage.stop()
    assert outer.seconds >= 0.08 and 0.02 <= inner.seconds < outer.seconds


def test_usage_and_cost_line_report_what_was_measured():
    counter = StageCounter("prepare", computed=2, seconds=12.345, peak_rss_bytes=3 * 2 ** 30)
    assert counter.usage() == {"computed": 2, "cached": 0, "seconds": 12.345, "peak_rss_mib": 3072.0,
                               "cuda_peak_mib": None}
    line = cost_line([counter, StageCounter("judge", seconds=1.0)])
    assert line == "cost: prepare 12.3 s (peak RSS 3.00 GiB), judge 1.0 s"
