"""The CI renderings of a check verdict (deploykit/gate/render.py), on verdict dicts built here:
the Markdown PR comment and the JUnit XML a CI system shows (tests/test_check_cli.py and
tests/test_resource_gate.py check them end to end through `deploykit check`)."""

import xml.etree.ElementTree as ET

from deploykit.gate.render import junit_xml, markdown, rows


def _gate(status="pass", failed=False, summary="ok", detail=""):
    return {"status": status, "failed": failed, "summary": summary, "detail": detail}


def _verdict(status="regression", latency_failed=True, memory=None, cold=None, **over):
    r = {"status": status, "failed": latency_failed, "latency_failed": latency_failed,
         "summary": "new is 12.0% slower", "old_median_ms": 1.0, "new_median_ms": 1.12,
         "ratio": 1.12, "ratio_ci": [1.08, 1.16], "conf": 0.99, "mode": "interleaved",
         "n_units": 12, "p_units": 0.001, "p_raw": 0.0002, "threshold": 0.05,
         "memory": memory or _gate(), "cold_start": cold or _gate(), "wall_s": 7.25,
         "contaminated_share": {"old": 0.0, "new": 0.25}, "state": "clean", "reason": None,
         "note": None, "env_differences": [], "model": "dir/new.onnx", "target": "ort-cpu",
         "baseline": "base.json",
         "per_op_diff": [{"name": "conv1", "op_type": "Conv", "old_ms": 0.5, "new_ms": 0.62,
                          "delta_ms": 0.12},
                         {"name": "added", "op_type": "Relu", "old_ms": None, "new_ms": 0.01,
                          "delta_ms": 0.01}]}
    r.update(over)
    return r


def test_rows_carry_the_numbers_and_say_why_a_measurement_is_not_clean():
    got = dict(rows(_verdict(state="contaminated", reason="foreign load in 3 rounds",
                             note="2 rounds dropped", env_differences=["threads 2 -> 4"])))
    assert got["ratio new/old"] == "1.1200  (99% CI 1.0800 – 1.1600)"
    assert got["mode"] == "interleaved (12 rounds of fresh sessions)"
    assert got["measurement"] == ("contaminated (rounds with foreign load: old 0%, new 25% of "
                                  "samples): foreign load in 3 rounds")
    assert got["note"] == "2 rounds dropped" and got["environment changed"] == "threads 2 -> 4"
    assert "note" not in dict(rows(_verdict()))


def test_markdown_titles_each_failing_gate_and_lists_the_slower_nodes():
    md = markdown(_verdict())
    assert md.startswith("### deploykit check: ❌ latency regression\n")
    assert "| `conv1` | Conv | 0.500 | 0.620 | +0.120 |" in md
    assert "| `added` | Relu | — | 0.010 | +0.010 |" in md  # a node the old model lacks
    both = markdown(_verdict(memory=_gate("regression", True, "peak +30%")))
    assert both.startswith("### deploykit check: ❌ memory regression and latency regression")
    ok = markdown(_verdict(status="no-change", latency_failed=False, per_op_diff=[]))
    assert ok.startswith("### deploykit check: ✅ no significant change") and "<details>" not in ok


def test_junit_has_one_case_per_gate_failures_and_skips():
    xml = junit_xml(_verdict(memory=_gate("regression", True, "peak +30%", "runs: ..."),
                             cold=_gate("no-data", False, "cold start not measured")))
    suite = ET.fromstring(xml).find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    assert suite.get("skipped") == "1"
    latency, memory, cold = suite.findall("testcase")
    assert latency.get("classname") == "deploykit.latency.ort-cpu" and latency.get("name") == \
        "new.onnx"
    failure = latency.find("failure")
    assert failure.get("type") == "LatencyRegression" and "conv1 (Conv)" in failure.text
    assert memory.find("failure").get("type") == "MemoryRegression"
    assert cold.find("skipped").get("message") == "cold start not measured"
    passed = ET.fromstring(junit_xml(_verdict(status="no-change", latency_failed=False)))
    assert passed.find("testsuite").get("failures") == "0"
    assert passed.find("testsuite/testcase/failure") is None
