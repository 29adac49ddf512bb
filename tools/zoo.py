#!/usr/bin/env python
"""Conformance run on public architectures nobody here wrote -> ZOO.md.

    .venv/bin/python tools/zoo.py                         # the whole corpus (long on 2 cores)
    .venv/bin/python tools/zoo.py --models onnx:squeezenet,hf:bert --search
    .venv/bin/python tools/zoo.py --cells search --search   # only the search column (+export)
    .venv/bin/python tools/zoo.py --report-only           # ZOO.md from tools/zoo_out/results.json

The corpus: the onnx wheel's model-zoo files (`onnx/backend/test/data/light/*.onnx`, as given)
and architectures built by `transformers` from their published configs (AutoConfig.for_model +
AutoModel.from_config: random weights, 2 layers, offline), exported with `deploykit export`.
Every cell runs the `deploykit` CLI as a user would, in a subprocess with a time limit: a cell is
"ok" (with the measured speedup or latency) or the one-line reason it failed. Results merge into
results.json (a run replaces the models it ran); ZOO.md is generated from it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tools" / "zoo_out"
COLUMNS = ("export", "intake", "int8 static", "int8 dynamic", "structured prune", "low-rank",
           "profile", "package+verify", "search")

# transformers architectures: (model_type, input kind, config overrides beyond 2 layers)
HF = {
    "bert": ("text", {}), "distilbert": ("text", {"n_layers": 2}), "roberta": ("text", {}),
    "albert": ("text", {}), "electra": ("text", {}), "xlm-roberta": ("text", {}),
    "mpnet": ("text", {}), "deberta-v2": ("text", {}), "camembert": ("text", {}),
    "gpt2": ("decoder", {"n_layer": 2}),
    "gpt_neo": ("decoder", {"num_layers": 2, "attention_types": [[["global"], 2]]}),
    "opt": ("decoder", {}), "llama": ("decoder", {"hidden_size": 256, "intermediate_size": 688,
                                                 "num_attention_heads": 4,
                                                 "num_key_value_heads": 4}),
    "qwen2": ("decoder", {"hidden_size": 256, "intermediate_size": 688,
                          "num_attention_heads": 4, "num_key_value_heads": 4}),
    "vit": ("image", {}), "deit": ("image", {}), "beit": ("image", {}), "dinov2": ("image", {}),
    "convnext": ("image", {"depths": [1, 1, 1, 1]}), "resnet": ("image", {"depths": [1, 1, 1, 1]}),
    "regnet": ("image", {"depths": [1, 1, 1, 1]}), "mobilenet_v2": ("image", {}),
    "efficientnet": ("image", {}), "mobilevit": ("image", {}),
    "swin": ("image", {"depths": [1, 1, 1, 1]}),
    "wav2vec2": ("audio", {}), "hubert": ("audio", {}),
}
FACTORY = '''"""transformers {arch} from its config (random weights, 2 layers), for tools/zoo.py."""
import torch


def build():
    from transformers import AutoConfig, AutoModel

    overrides = {overrides!r}
    cfg = AutoConfig.for_model({arch!r}, **overrides)
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        # staged CNNs/Swin are shortened by `depths`; their num_hidden_layers is the stage count
        if hasattr(cfg, key) and key not in overrides and "depths" not in overrides \
                and isinstance(getattr(cfg, key), int):
            setattr(cfg, key, 2)
    if hasattr(cfg, "use_cache"):
        cfg.use_cache = False
    torch.manual_seed(0)
    try:  # eager attention exports to plain ops on every exporter
        inner = AutoModel.from_config(cfg, attn_implementation="eager")
    except (TypeError, ValueError):
        inner = AutoModel.from_config(cfg)

    class First(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            names = {names!r}
            return self.m(**dict(zip(names, args)))[0]

    return First(inner.eval()).eval()


def example_inputs():
    kind = "{kind}"
    if kind in ("text", "decoder"):
        ids = torch.randint(0, 100, (1, 128))
        return (ids, torch.ones(1, 128, dtype=torch.int64))
    if kind == "image":
        return (torch.randn(1, 3, 224, 224),)
    return (torch.randn(1, 16000),)
'''
NAMES = {"text": ["input_ids", "attention_mask"], "decoder": ["input_ids", "attention_mask"],
         "image": ["pixel_values"], "audio": ["input_values"]}


def zoo_files() -> dict[str, Path]:
    import onnx

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return {f"onnx:{p.stem.removeprefix('light_')}": p for p in sorted(light.glob("*.onnx"))}


def corpus() -> dict[str, object]:
    out: dict[str, object] = dict(zoo_files())
    out.update({f"hf:{a}": a for a in HF})
    return out


def dk(args: list[str], timeout: float, cwd: Path) -> tuple[bool, str, str]:
    """(ok, stdout, one-line reason) of a `deploykit` CLI run in `cwd` (onnxruntime's
    quantization tools leave temporary files in the working directory)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    try:
        p = subprocess.run([sys.executable, "-m", "deploykit", *args], capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        return False, "", f"over the {timeout:.0f} s limit of this run"
    if p.returncode == 0:
        return True, p.stdout, ""
    if p.returncode < 0:  # no line of its own to quote: SIGKILL is most often the OOM killer
        sig = signal.Signals(-p.returncode).name if -p.returncode in signal.valid_signals() \
            else str(-p.returncode)
        return False, p.stdout, f"killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL"
                                                     else "")
    lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
    err = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else
               f"exit {p.returncode}")
    return False, p.stdout, err.replace("deploykit: error: ", "")[:240]


def _step_cell(work: Path, model: Path, recipe: str, tag: str, max_time: float,
               timeout: float) -> dict:
    rep = work / f"{tag}.json"
    ok, out, err = dk(["compress", str(model), "-r", recipe, "-o", str(work / f"{tag}.onnx"),
                       "--no-store", "--json", str(rep), "--max-time", str(max_time)],
                      timeout, work)
    if not ok:  # a step that did not apply says why on its "skipped:" line
        why = next((ln.split("skipped: ", 1)[1] for ln in out.splitlines() if "skipped: " in ln),
                   None)
        return {"ok": False, "text": (f"{recipe.split(':')[0]} skipped: {why}" if why
                                      else err)[:240]}
    data = json.loads(rep.read_text())
    row = data["realized"]["rows"][0]
    sp = row.get("speedup")
    cos = (row.get("fidelity") or {}).get("cosine")
    text = f"ok {sp['ratio']:.2f}x" if sp else "ok"
    step = recipe.split(":")[0]
    return {"ok": True, "text": text + (f", cos {cos:.3f}" if cos is not None else "")
            + f" ({step})",
            "speedup": sp and sp["ratio"], "recipe": recipe}


def run_model(name: str, source, work: Path, args) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cells: dict[str, dict] = {}
    t0 = time.time()
    if isinstance(source, Path):
        model = source
        cells["export"] = {"ok": True, "text": "as given (onnx file)"}
    else:
        kind, overrides = HF[source]
        factory = work / "factory.py"
        factory.write_text(FACTORY.format(arch=source, kind=kind, overrides=overrides,
                                          names=NAMES[kind]))
        model = work / "model.onnx"
        ok, _, err = dk(["export", f"{factory}:build", "-o", str(model), "--json",
                         str(work / "export.json")], args.timeout, work)
        if not ok:
            cells["export"] = {"ok": False, "text": err}
            return {"cells": cells, "seconds": time.time() - t0}
        exp = json.loads((work / "export.json").read_text())
        caveat = "; output subnormal with random weights, values compared as zeros" if any(
            "entirely subnormal" in w for w in exp.get("warnings", [])) else ""
        cells["export"] = {"ok": True, "text": f"ok ({exp.get('exporter')}){caveat}"}
    sys.path.insert(0, str(ROOT))
    from deploykit.intake import intake
    from deploykit.onnxio import load_onnx
    from deploykit.search.candidates import model_traits

    try:
        taken = intake(model, work / "intake")
        cells["intake"] = {"ok": True, "text": "ok, normalized" if taken.changed else "ok"}
    except Exception as e:  # noqa: BLE001 - a cell records any failure as its reason
        cells["intake"] = {"ok": False, "text": str(e).splitlines()[0][:240]}
        return {"cells": cells, "seconds": time.time() - t0}
    traits = model_traits(load_onnx(taken.path))
    mt, to = args.max_time, args.timeout
    want = set(args.cells.split(",")) if args.cells else set(COLUMNS)
    if "int8 static" in want:
        cells["int8 static"] = _step_cell(work, model, "quantize-static", "qs", mt, to)
    if "int8 dynamic" in want:
        cells["int8 dynamic"] = _step_cell(work, model, "quantize-dynamic", "qd", mt, to) \
            if traits["linear"] else {"ok": None, "text": "n/a (no MatMul/Gemm)"}
    if "structured prune" in want:
        prune = "prune-channels:ratio=0.5" if traits["conv"] else "prune-ffn:ratio=0.5"
        cells["structured prune"] = _step_cell(work, model, prune, "pr", mt, to)
        if not cells["structured prune"]["ok"] and traits["conv"] and traits["linear"]:
            # a conv net with a Linear head, or a transformer with a patch Conv: its Linear
            # side; when both fail the cell keeps the first step's reason
            ffn = _step_cell(work, model, "prune-ffn:ratio=0.5", "pr", mt, to)
            cells["structured prune"] = ffn if ffn["ok"] else cells["structured prune"]
    if "low-rank" in want:
        low = "lowrank:ratio=0.5" if traits["linear"] and not traits["conv"] else "tucker"
        cells["low-rank"] = _step_cell(work, model, low, "lr", mt, to)
        if not cells["low-rank"]["ok"] and traits["conv"] and traits["linear"]:
            lin = _step_cell(work, model, "lowrank:ratio=0.5", "lr", mt, to)
            cells["low-rank"] = lin if lin["ok"] else cells["low-rank"]
    if "profile" in want:
        ok, out, err = dk(["profile", str(model), "--no-store", "--max-time", str(mt), "--json",
                           str(work / "profile.json"), "--quiet"], to, work)
        if ok:
            med = json.loads((work / "profile.json").read_text()).get("median_ms")
            cells["profile"] = {"ok": True, "text": f"ok {med:.2f} ms" if med else "ok"}
        else:
            cells["profile"] = {"ok": False, "text": err}
    if "package+verify" in want:
        bundle = work / "bundle"
        ok, _, err = dk(["package", str(model), "-o", str(bundle), "--no-measure",
                         "--no-store", "--force"], to, work)
        if ok:
            ok, _, err = dk(["verify", str(bundle)], to, work)
        cells["package+verify"] = {"ok": ok, "text": "ok" if ok else err}
    if "search" in want and args.search:
        ok, out, err = dk(["search", str(model), "--out", str(work / "search"), "--time-limit",
                           args.search_limit, "--no-store", "--quiet"], to * 4, work)
        rec = None
        if ok and (work / "search" / "search.json").is_file():
            rec = json.loads((work / "search" / "search.json").read_text()).get("recommendation")
        text = ("ok, no candidate beat the original" if ok and not rec else
                f"ok {rec['speedup']:.2f}x {rec['name']}" if ok else err)
        cells["search"] = {"ok": ok, "text": text[:240],
                           "speedup": rec and rec.get("speedup")}
    elif "search" in want:
        cells["search"] = {"ok": None, "text": "not run (--search)"}
    return {"cells": cells, "seconds": time.time() - t0}


def merge(results: dict, name: str, run: dict, partial: bool) -> None:
    """A model's run replaces its entry; a partial run (`--cells`) keeps the cells it did not
    re-run from the earlier entry."""
    old = results["models"].get(name, {}).get("cells", {}) if partial else {}
    results["models"][name] = {**run, "cells": {**old, **run["cells"]}}


def report(results: dict) -> str:
    lines = ["# ZOO: deploykit on public architectures nobody here wrote", "",
             "Generated by `tools/zoo.py` from `tools/zoo_out/results.json` (nothing typed by "
             "hand). Random or constant weights: fidelity figures say the rewrite is faithful, "
             "not that the model is accurate. Speedups are ORT CPU fp32 -> step, interleaved, "
             "on a shared 2-core machine.", ""]
    models = results.get("models", {})
    rates = []
    for col in COLUMNS:
        vals = [m["cells"].get(col, {}).get("ok") for m in models.values()]
        tried = [v for v in vals if v is not None]
        rates.append(f"{col}: {sum(1 for v in tried if v)}/{len(tried)}")
    lines += ["Pass rates (cells run): " + "; ".join(rates), ""]
    lines.append("| model | " + " | ".join(COLUMNS) + " |")
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for name, m in sorted(models.items()):
        cells = [m["cells"].get(c, {"text": "not reached"})["text"].replace("|", "/")
                 for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Runs: {'; '.join(results.get('runs', []))}", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names (default: the whole corpus)")
    p.add_argument("--max-time", type=float, default=5.0, help="timed phase per step (s)")
    p.add_argument("--timeout", type=float, default=600.0, help="limit per CLI call (s)")
    p.add_argument("--search", action="store_true", help="also run a short search per model")
    p.add_argument("--search-limit", default="2m")
    p.add_argument("--cells", help="comma-separated columns to (re)run; the model's other "
                   "cells keep their earlier results (export and intake always run)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    bad = [c for c in (args.cells or "").split(",") if args.cells and c not in COLUMNS]
    if bad:
        print(f"zoo: unknown columns {bad} (known: {', '.join(COLUMNS)})", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    res_path = OUT / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"models": {}, "runs": []}
    if not args.report_only:
        every = corpus()
        names = [n.strip() for n in args.models.split(",")] if args.models else list(every)
        unknown = [n for n in names if n not in every]
        if unknown:
            print(f"zoo: unknown models {unknown} (known: {', '.join(every)})", file=sys.stderr)
            return 2
        for name in names:
            with tempfile.TemporaryDirectory(prefix="zoo-") as tmp:
                r = run_model(name, every[name], Path(tmp), args)
            merge(results, name, r, partial=bool(args.cells))
            print(f"{name}: " + "; ".join(f"{c}: {r['cells'].get(c, {}).get('text', '-')}"
                                          for c in COLUMNS), flush=True)
            tmp_path = res_path.with_suffix(".tmp")
            tmp_path.write_text(json.dumps(results, indent=1))
            os.replace(tmp_path, res_path)
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() \
            else ["?"]
        results["runs"].append(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
                               f"python tools/zoo.py {' '.join(sys.argv[1:])} (load average "
                               f"{' '.join(load)} on {os.cpu_count()} CPUs at the end)")
        res_path.write_text(json.dumps(results, indent=1))
    (ROOT / "ZOO.md").write_text(report(results))
    print(f"wrote {ROOT / 'ZOO.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
