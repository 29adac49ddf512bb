"""The search report: Markdown tables, a self-contained HTML that headless Chromium renders with
the key numbers in its DOM and a non-blank screenshot, and the `deploykit report` verb."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit.report.html import candidate_table, load_search, render_markdown, write_report

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium, which the set-up installs (tools/setup_system.sh, run by `make test`):
    the report must be checked in CI, so a missing browser fails loudly, never skips."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, ("headless Chromium is not installed: run `bash tools/setup_system.sh` (or "
                 "`apt-get install chromium`) before the tests")
    return exe


def _cand(i, name, family, median, fid, status="ok", predicted=None):
    return {"id": f"c{i}", "name": name, "family": family, "recipe": "" if i == 0 else name,
            "options": {}, "status": status, "reason": None if status == "ok" else "fidelity low",
            "fidelity": fid, "stats": {"params": 1_200_000 - i * 100_000, "bytes": 4_800_000 // (i + 1),
                                       "flops": 3.6e9 / (i + 1)},
            "table_ms": median, "predicted_ms": predicted,
            "measured": None if median is None else {"median_ms": median,
                                                     "ci95_ms": [median * 0.98, median * 1.02],
                                                     "n": 100, "stop_reason": "ci-reached"},
            "reused": False, "notes": [], "metric": None, "fidelity_detail": {}}


def synthetic_result() -> dict:
    cands = [_cand(0, "baseline", "baseline", 17.5, 1.0),
             _cand(1, "quantize-static", "int8", 5.731, 0.9993, predicted=5.2),
             _cand(2, "prune-channels:ratio=0.5", "prune", 9.7, 0.95, predicted=10.1),
             _cand(3, "prune-channels:ratio=0.5; quantize-static", "prune+int8", None, 0.94,
                   predicted=3.9),
             _cand(4, "lowrank:ratio=0.125", "lowrank", None, 0.42, status="rejected")]
    rec = {"id": "c1", "name": "quantize-static", "recipe": "quantize-static", "options": {},
           "median_ms": 5.731, "ci95_ms": [5.70, 5.76], "baseline_ms": 17.55,
           "baseline_ci95_ms": [17.4, 17.7], "speedup": 3.062, "speedup_ci95": [3.01, 3.11],
           "verdict": "realized", "fidelity": 0.9993, "path": "x.onnx", "sha256": "ab",
           "interleaved": True}
    per_op = {"baseline": [{"name": "c1", "op_type": "Conv", "total_ms": 15.25, "share": 0.9,
                            "calls": 1}],
              "recommendation": [{"name": "q1", "op_type": "QLinearConv", "total_ms": 4.875,
                                  "share": 0.9, "calls": 1}]}
    return {"schema": 1, "kind": "deploykit-search", "model": "/m/resnet18.onnx",
            "target": "ort-cpu",
            "config": {"budget_ms": None, "min_fidelity": 0.99, "time_limit_s": 600},
            "candidates": cands, "pareto": ["c0", "c1", "c2"], "recommendation": rec,
            "infeasible": None,
            "predictor": {"measured_whole": 2, "mean_abs_rel_error": 0.0712,
                          "max_abs_rel_error": 0.0933, "errors": []},
            "cost": {"candidates": 5, "built": 5, "fidelity_ok": 4, "measured_whole": 3,
                     "units_timed": 40, "units_reused": 12, "seconds": 81.0},
            "env": {"cpu_model": "AMD EPYC 9R14", "threads": 2, "versions": {"onnxruntime": "1.x"}},
            "per_op": per_op, "notes": ["time limit reached", OV_ERROR]}


OV_ERROR = ("quantize-static @ target=ov-cpu: no layer table of its own (RuntimeError: Exception "
            "from src/inference/src/cpp/compiled_model.cpp:84:\nCheck 'false' failed at src/"
            "plugins/intel_cpu/src/graph.cpp:1234)")


def with_runtimes(data: dict) -> dict:
    """The synthetic result as a search with --runtimes ort-cpu,ov-cpu writes it."""
    ov = _cand(6, "nncf-int8 @ target=ov-cpu", "int8", 4.1, 0.9991)
    ov["options"], ov["runtime"] = {"target": "ov-cpu"}, "ov-cpu"
    ov["expert"] = "OpenVINO expert: NNCF int8"
    failed = _cand(7, "tucker", "tucker", None, None, status="failed")
    failed["reason"] = "RuntimeError: Exception from src/core/shape_inference.cpp:99:\nline two"
    dup = _cand(8, "quantize-static:per_channel=false", "int8", None, 0.9993, status="duplicate")
    dup["reason"] = "same model as quantize-static"
    data["candidates"] += [ov, failed, dup]
    data["candidates"][1]["expert"] = "ORT expert: calibrated static int8, per-channel U8S8"
    data["alternatives"] = [{"runtime": "ov-cpu", "id": "c6", "name": ov["name"],
                             "recipe": "nncf-int8", "options": {"target": "ov-cpu"},
                             "median_ms": 4.1, "ci95_ms": [4.0, 4.2], "baseline_ms": 17.5,
                             "speedup": 4.268, "speedup_ci95": [4.2, 4.33], "verdict": "realized",
                             "fidelity": 0.9991, "expert": ov["expert"], "interleaved": True}]
    data["runtimes"] = {"recommendation": "ort-cpu", "searched": ["ort-cpu", "ov-cpu"],
                        "not_searched": []}
    return data


def test_tables_and_markdown():
    data = synthetic_result()
    variant = _cand(5, "lowrank:ratio=0.125 @ threads=1", "lowrank", None, 0.42, status="rejected")
    variant["options"] = {"threads": 1}
    data["candidates"].append(variant)
    head, rows = candidate_table(data)
    assert len(rows) == 5  # rejected target-option variants of a rejected model are folded
    assert rows[0][0].startswith("quantize-static ★")  # measured rows first, fastest first
    assert rows[0][7] == "3.06x [3.01, 3.11]" and rows[0][9] == "realized (interleaved)"
    prune = next(r for r in rows if r[0].startswith("prune-channels:ratio=0.5 "))
    assert prune[7] == "1.80x"  # 17.5 / 9.7
    rejected = next(r for r in rows if r[0].startswith("lowrank"))
    assert rejected[1] == "rejected" and rejected[5] == "-"
    md = render_markdown(data)
    for s in ("| quantize-static ★ (front) | ok | 1.10M | 2.29 MB | 1.80G | 5.731 [5.616, 5.846]",
              "| QLinearConv | - | 4.875 |", "mean 7.1%, max 9.3%", "![Pareto plot](pareto.png)",
              "3 measured whole (75% of those that passed)", "AMD EPYC 9R14"):
        assert s in md, s


def test_html_renders_in_headless_chromium(tmp_path, chromium):
    data = with_runtimes(synthetic_result())
    paths = write_report(data, tmp_path)
    html = paths["html"].read_text()
    assert "src=\"http" not in html and "<script src" not in html  # self-contained, no CDN
    assert "Exception from src/" not in html  # runtime source paths never reach the page
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--no-first-run"]
    dom = subprocess.run(cmd + ["--dump-dom", paths["html"].as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for key in ("3.06x [3.01, 3.11]", "5.731 [5.616, 5.846]", "quantize-static ★",
                "17.550 ms", "fidelity 0.9993", "AMD EPYC 9R14", "4.875", "15.250"):
        assert key in dom.stdout, key
    page = dom.stdout
    # the recommendation leads, then each runtime's best, the plot, and only then the candidates
    order = [page.index(k) for k in ('id="recommendation"', "Recommendation on ort-cpu",
                                     "4.27x [4.20, 4.33]", 'id="pareto"', 'id="cands"')]
    assert order == sorted(order)
    assert "alternative (another runtime)" in page and "nncf-int8 @ target=ov-cpu" in page
    assert "per-channel U8S8" in page[:page.index('id="pareto"')]  # why an expert picks it
    # not-timed candidates folded, summarised in one line, their reasons one line each
    folded = page[page.index('<details id="folded"'):]
    assert ("3 candidates not timed: 1 below the fidelity floor, 1 failed to build or run, "
            "1 duplicates") in folded
    assert "runtime exception" in folded and "line two" not in page
    assert page.index('<details id="notes"') > page.index('id="pareto"')
    # sorting and filtering run in the browser: open it filtered to "int8", sorted by median
    col = candidate_table(data)[0].index("median ms (95% CI)")
    for sort, first in ((f"-{col}", "quantize-static ★"), (str(col), "nncf-int8 @")):
        r = subprocess.run(cmd + ["--dump-dom", paths["html"].as_uri() + f"#filter=int8&sort={sort}"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        table = r.stdout[r.stdout.index('id="cands"'):]
        assert f'data-sorted="{sort}"' in table[:200]
        body = table[:table.index("</table>")]
        shown = [row for row in body.split("<tr")[2:] if "display: none" not in row]
        hidden = [row for row in body.split("<tr")[2:] if "display: none" in row]
        assert shown and all("int8" in row for row in shown)  # its family, if not its name
        assert hidden and not any("int8" in row for row in hidden)
        assert first in shown[0], shown[0][:300]
        measured = [row for row in shown if "data-v" in row.split("</td>")[col]]
        assert len(measured) == 2 and shown[:2] == measured  # unmeasured ones last
        assert 'id="shown">' + str(len(shown)) in r.stdout
    shot = tmp_path / "shot.png"
    r = subprocess.run(cmd + [f"--screenshot={shot}", "--window-size=1200,1600",
                              paths["html"].as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert float(np.std(img[..., :3])) > 0.02  # not a blank page
    # the embedded plot decodes to a real image too
    plot = mpimg.imread(paths["png"])
    assert plot.shape[1] > 500 and float(np.std(plot[..., :3])) > 0.02


def test_pareto_legend_is_clear_of_the_points():
    from deploykit.report.pareto import pareto_figure

    fig = pareto_figure(with_runtimes(synthetic_result()))
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())  # beside the axes, not over the points
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "other runtime" in labels and any(lb.startswith("recommended") for lb in labels)


def test_report_cli_and_bad_input(tmp_path):
    (tmp_path / "search.json").write_text(json.dumps(synthetic_result()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "deploykit", "report", str(tmp_path), "-o",
                        str(tmp_path / "rep")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "report.html").exists() and (tmp_path / "rep" / "report.md").exists()
    (tmp_path / "bad.json").write_text("{}")
    r = subprocess.run([sys.executable, "-m", "deploykit", "report", str(tmp_path / "bad.json")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "is not a deploykit search result" in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(Exception, match="search result not found"):
        load_search(tmp_path / "nope")
