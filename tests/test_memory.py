"""Memory per phase (measure/memory.py): the phase logic with a planted RSS reader, and the real
sampler on a real ORT session whose weights are large enough to show."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.core import LatencyReport
from deploykit.measure import memory as mem


class Planted:
    """An RSS reader that returns planted numbers in order (then the last one)."""

    def __init__(self, values):
        self.values = list(values)
        self.i = 0

    def __call__(self):
        v = self.values[min(self.i, len(self.values) - 1)]
        self.i += 1
        return v


def test_sampler_keeps_the_start_and_the_peak():
    with mem.RssSampler(interval_s=0.001, reader=Planted([100, 300, 250, 200])) as s:
        import time
        time.sleep(0.05)
    ph = s.phase
    assert ph.start_bytes == 100 and ph.peak_bytes == 300 and ph.samples >= 4


def test_a_short_phase_still_has_its_two_ends():
    with mem.RssSampler(interval_s=10.0, reader=Planted([100, 180])) as s:
        pass
    assert s.phase.start_bytes == 100 and s.phase.peak_bytes == 180 and s.phase.samples == 2


def test_memory_dict_gives_deltas_over_the_process_before_loading(tmp_path):
    path = _model(tmp_path / "m.onnx", 1000)
    d = mem.memory_dict(1_000, mem.Phase(1_000, 5_000, 3), mem.Phase(4_000, 4_500, 2),
                        mem.Phase(4_200, 6_000, 20), str(path))
    assert (d["load_delta_bytes"], d["first_delta_bytes"], d["steady_delta_bytes"]) == \
        (4_000, 3_500, 5_000)
    assert d["steady_peak_bytes"] == 6_000
    assert d["weight_bytes"] == 64 * 1000 * 4 + 1000 * 8 * 4
    assert d["file_bytes"] == path.stat().st_size


def test_old_reports_without_memory_still_load():
    d = _report_dict()
    for k in ("memory", "cold_start_samples_ms", "warmup_ms"):
        d.pop(k, None)
    r = LatencyReport.from_dict(d)
    assert r.memory == {} and r.memory_bytes("steady_peak_bytes") is None
    assert r.cold_start_samples_ms == ()


def _model(path, width):
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, width)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((width, 8)).astype(np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w1, w2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _report_dict():
    return {"samples_ms": [1.0, 1.1, 0.9], "target": "ort-cpu", "target_config": {},
            "artifact_id": "a", "model_sha256": "0" * 64, "model_path": "m.onnx", "env": {},
            "stop_reason": "time-cap"}


def test_profile_reports_every_phase_with_the_weights_in_it(tmp_path):
    """A real ORT session of a model with 32 MiB of weights: load and steady deltas see them."""
    from deploykit import api
    from deploykit.core import TimingPlan

    path = _model(tmp_path / "big.onnx", 125_000)
    plan = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.1, max_time_s=0.3, min_samples=5,
                      min_blocks=2, block_s=0.05)
    rep = api.profile(str(path), plan=plan, per_op=False, store=False)
    m = rep.memory
    w = m["weight_bytes"]
    assert w == pytest.approx(125_000 * 72 * 4)
    assert m["load_delta_bytes"] > 0.8 * w  # the session holds the weights
    assert m["steady_peak_bytes"] >= m["rss_before_bytes"] + 0.8 * w
    assert m["steady_delta_bytes"] < 4 * w  # and not a wild overcount
    d = rep.to_dict()
    assert d["memory"]["steady_delta_bytes"] == m["steady_delta_bytes"]
    assert LatencyReport.from_dict(d).memory == m
    assert rep.cold_start_samples_ms == (rep.session_create_ms + rep.first_inference_ms,)
    for k in ("min_ms", "p5_ms", "p95_ms", "max_ms", "trimmed_mean_ms", "iqr_ms", "warmup_ms",
              "cold_start_ms"):
        assert d[k] == d[k] and d[k] >= 0, k


def test_the_store_keeps_memory_stability_and_layer_names(tmp_path):
    """The report JSON is stored whole: memory, cold starts, stability and per-op names come
    back from the store."""
    from deploykit.core import OpTime
    from deploykit.store import Store

    d = _report_dict()
    d.update(model_sha256="a" * 64, memory={"steady_peak_bytes": 123, "runs": [{"x": 1}]},
             cold_start_samples_ms=[5.0, 6.0], stability={"flagged": False, "drift": 0.01},
             per_op=[{"name": "r0_nchwc", "op_type": "Conv", "total_ms": 0.5, "share": 1.0,
                      "layer": "c/Conv + r/Relu", "module": "c"}])
    rep = LatencyReport.from_dict(d)
    with Store(tmp_path / "s.sqlite") as st:
        back = st.report(st.record_report(rep))
    assert back.memory == rep.memory and back.cold_start_samples_ms == (5.0, 6.0)
    assert back.stability == rep.stability
    assert back.per_op == (OpTime("r0_nchwc", "Conv", 0.5, 1.0, 1, "c/Conv + r/Relu", "c"),)


def test_ort_allocator_stats_from_planted_profiler_events():
    from deploykit.backends.ort import allocator_stats

    ev = [{"cat": "Node", "name": "a", "args": {"mem_arena_held": "4096", "mem_in_use_peak": 100,
                                                 "mem_bytes_in_use": 50}},
          {"cat": "Node", "name": "b", "args": {"mem_arena_held": 8192, "mem_in_use_peak": 300}},
          {"cat": "Session", "name": "model_run", "args": {}}]
    d = allocator_stats(ev)
    assert d["arena_held_bytes"] == 8192 and d["arena_in_use_peak_bytes"] == 300
    assert d["arena_in_use_bytes"] == 50 and "onnxruntime" in d["source"]
    assert allocator_stats([{"cat": "Node", "args": {"op_name": "Relu"}}]) is None


def test_ort_reports_its_arena_statistics_in_the_profile(tmp_path):
    """A real ORT profile of a model whose intermediates are 16 MiB wide: the arena statistics
    ORT's profiler writes come back in memory.runtime, and they count that intermediate."""
    from deploykit import api
    from deploykit.core import TimingPlan
    from deploykit.report.terminal import memory_rows

    wide = 4 * 2**20 // 8  # floats per row of the [8, wide] intermediate: 16 MiB in all
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, wide)).astype(np.float32) * 0.01, "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("ReduceSum", ["r"], ["y"], keepdims=1, name="sum")]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [w])
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    plan = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.1, max_time_s=0.3, min_samples=5,
                      min_blocks=2, block_s=0.05)
    rep = api.profile(str(path), plan=plan, per_op=True, store=False)
    rt = rep.memory["runtime"]
    assert rt["arena_in_use_peak_bytes"] >= 8 * wide * 4  # the intermediate went through it
    assert rt["arena_held_bytes"] >= rt["arena_in_use_peak_bytes"]
    assert any(k == "memory: runtime's own" for k, _ in memory_rows(rep))


def test_terminal_rows_for_a_device_figure_and_a_missing_one():
    from deploykit.report.terminal import memory_rows

    d = _report_dict()
    d["memory"] = {"device": {"peak_bytes": 300 * 2**20, "rss_bytes": 290 * 2**20,
                              "rss_before_bytes": 200 * 2**20, "peak_delta_bytes": 100 * 2**20,
                              "emulated": True}}
    rows = dict(memory_rows(LatencyReport.from_dict(d)))
    assert rows["memory: device"].startswith("peak RSS 300.0 MiB (+100.0 MiB")
    assert "EMULATED" in rows["memory: device"] and "model bytes" not in rows
    d["memory"] = {"device": {"error": "not measured: no compiler"}}
    assert dict(memory_rows(LatencyReport.from_dict(d)))["memory: device"] == \
        "not measured: no compiler"


def test_the_kernel_high_water_mark_catches_a_peak_between_samples(monkeypatch):
    """A 96 MiB buffer that lives ~1 ms inside a phase sampled every 10 s: the samples miss it,
    the kernel's VmHWM (reset when the phase began) does not."""
    import time

    monkeypatch.setattr(mem, "_kernel_enabled", True)  # as in the CLI's own process

    with mem.RssSampler(interval_s=10.0) as s:
        b = np.ones(96 * 2**20 // 8)
        del b
        time.sleep(0.001)
    ph = s.phase
    assert ph.kernel_peak_bytes is not None, "no /proc/self/clear_refs on this Linux?"
    assert ph.sampled_peak_bytes - ph.start_bytes < 48 * 2**20  # both samples after the free
    assert ph.peak_bytes - ph.start_bytes > 90 * 2**20
    d = mem.memory_dict(ph.start_bytes, None, None, ph, __file__)
    assert d["source"].startswith("kernel VmHWM") and d["steady_sampled_peak_bytes"] > 0


def test_planted_readers_and_library_use_do_not_touch_the_kernel_mark(monkeypatch):
    # deploykit used as a library: the CLI's own_process() (called in-process by earlier tests
    # through cli.main) is not in effect here
    monkeypatch.setattr(mem, "_kernel_enabled", False)
    with mem.RssSampler(interval_s=10.0) as s:  # a library inside someone else's process
        pass
    assert s.phase.kernel_peak_bytes is None
    monkeypatch.setattr(mem, "_kernel_enabled", True)
    with mem.RssSampler(interval_s=10.0, reader=Planted([100, 180])) as s:
        pass
    assert s.phase.kernel_peak_bytes is None and s.phase.peak_bytes == 180
