import pytest

from deploykit.measure import roofline
from deploykit.core import TimingPlan


def test_roofline_known_answer():
    c = roofline.Ceilings(fp32_gflops=200, int8_gops=800, mem_gbps=25, threads=2)
    # 2 GFLOP fp32 -> 10 ms; 0.8 GOP int8 -> 1 ms; 50 MB -> 2 ms: compute-bound 11 ms
    assert roofline.roofline_ms(2e9, 0.8e9, 50e6, c) == pytest.approx(11.0)
    # 1 GB of weights at 25 GB/s: memory-bound 40 ms
    assert roofline.roofline_ms(1e6, 0, 1e9, c) == pytest.approx(40.0)
    assert roofline.model_roofline_ms({"flops": 0}, c) is None


def test_measure_ceilings_small():
    plan = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.1, max_time_s=0.3, min_samples=5)
    c = roofline.measure_ceilings(threads=1, sizes=(96, 128), plan=plan)
    assert c.fp32_gflops > 0.1 and c.int8_gops > 0.1 and c.mem_gbps > 0.1
