"""Accuracy recovery inside the search: torch-side structured pruning, then knowledge distillation
against the original model on the calibration inputs (soft targets, no labels), time-bounded per
candidate (NetAdapt's short-term fine-tune), then export and verification like any candidate.

Without retraining, structured pruning of trained weights loses too much to pass a sensible floor
(ResNet-50, 50% channels: cosine 0.72), so a search would return int8 alone. Recovery needs the
torch module, so it exists only for torch sources (a factory `file.py:build`, or a module given to
the Python API); for an ONNX file the search says plainly that it is unavailable.

Recovery first re-estimates the pruned model's BatchNorm statistics on the calibration inputs
(compress/batchnorm.py), then distills on the outputs and on the feature maps at the block
boundaries, compared at the channels the prune kept (compress/hints.py).

A recovered candidate is the recipe `torch-prune:budget_s=B,ratio=R` (optionally followed by
ordinary rewrite steps, e.g. int8); its build — the pruned export, the fidelity before recovery,
the distilled export, the fidelity after, the seconds and steps spent — is cached in OUTDIR/.work
like every other build, so a killed search resumes without re-training a finished candidate.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError

STEP = "torch-prune"  # the recipe step name of a torch-side prune (+ recovery)
RATIOS = (0.25, 0.5, 0.75)
FINAL_FACTOR = 5.0  # the final pick's fine-tune, in per-candidate budgets (CLI default)
MIX = 0.5  # share of each distillation batch mixed with another input (function matching)
HINT_WEIGHT = 1.0  # feature hints' weight at the start of a recovery (falls to 0 by its end)
UNAVAILABLE_ONNX = ("recovery by distillation is unavailable: the source is an ONNX file, and no "
                    "maintained ONNX-to-torch converter is used here to get a trainable module "
                    "back; search the torch factory (file.py:build) or pass the module to "
                    "deploykit.search to recover pruned candidates")


@dataclass
class TorchSource:
    """The torch module a search's ONNX source was exported from, with its example inputs."""

    module: Any  # torch.nn.Module (eval mode)
    example: tuple  # tensors

    @property
    def digest(self) -> str:
        from ..export.torch_source import state_dict_sha256

        return state_dict_sha256(self.module)[:16]


def from_factory(spec: str, shapes, seed: int) -> TorchSource:
    """`file.py:build` -> the module it builds (weights as the factory sets them)."""
    from ..export.torch_source import load_factory, make_example_inputs

    factory, example, _ = load_factory(spec)
    try:
        module = factory()
    except Exception as e:  # user code
        raise InputError(f"{spec}: the factory raised {type(e).__name__}: {e}") from None
    module.eval()
    args, _ = make_example_inputs(module, example, shapes, seed)
    return TorchSource(module, tuple(args))


def inputs_of(batches: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """The calibration batches as one float array for a one-input module."""
    names = {tuple(sorted(b)) for b in batches}
    if len(names) != 1 or len(next(iter(names))) != 1:
        raise InputError("recovery needs a model with one input (calibration batches of one "
                         "tensor)")
    return np.concatenate([next(iter(b.values())) for b in batches]).astype(np.float32)


def distill_for(student, teacher, x: np.ndarray, budget_s: float, *, fresh: bool = False,
                lr: float = 3e-3, temperature: float = 4.0, batch_size: int = 32,
                seed: int = 0, kept: dict | None = None,
                hint_weight: float = HINT_WEIGHT, steps: int | None = None,
                mix: float = MIX) -> dict[str, Any]:
    """Train `student` against `teacher` for about `budget_s` seconds (at least one step), no
    labels: Hinton's soft targets (compress/distill.py) plus logit matching (its high-temperature
    limit, normalised by the teacher's logit variance), which is what the search's output cosine
    judges. Batches are drawn from `x`, or with `fresh` (synthetic calibration: random inputs
    anyway) new random inputs of the same mean and spread every step, so a handful of synthetic
    samples is not memorised. Returns steps, seconds and the mean loss per 20 steps.

    With `kept` (prune_filters' channel map of `student`, pruned from `teacher`), the feature
    maps at the hint points (compress/hints.py: the block boundaries torch.fx finds) are matched
    too, the student's against the teacher's at the channels it kept (FitNets' hints; the
    layer-wise reconstruction of ThiNet / He et al. 2017), each as a relative squared error.
    Their weight falls linearly from `hint_weight` to 0 over the budget: block by block first,
    then the outputs alone, end to end. The record adds the hint points and their loss.
    `mix`: that share of each batch of real inputs is mixed with another input (weight drawn
    uniformly) and the teacher labels the mixture, so the student matches the teacher's function
    between the calibration inputs too (Beyer et al. 2022, "a good teacher is patient and
    consistent"), not only at the few hundred points it would otherwise memorise: on the
    ResNet-style digits net cut 75% with its streams, 1,500 steps on 936 digits reached a worst
    held-out cosine of 0.938 (mean 0.9868) with it, 0.871 (0.9830) without.
    `steps` trains exactly that many steps instead (the schedules by step, not by time): for
    comparisons that must not depend on the machine's load.

    Peak learning rate 3e-3 (Adam, cosine decay): on the MNIST CNN pruned 75%, 3,000 steps on
    1,000 digits reached 95.3% held-out vs 94.2% at 1e-3 (teacher 96.0%). Tried and left out,
    as they did not help there: mixup of the calibration inputs (+0.2/-0.2 point) and
    re-estimating BatchNorm statistics after training (0.0/-0.4 point; before training, right
    after the prune, is another matter: build_recovered does that). BatchNorm trains in train
    mode (batch statistics): on the ResNet-style digits net cut 75% with its streams, 300 steps
    with the statistics frozen reached a worst held-out cosine of 0.68, in train mode 0.82.

    Measured on that net (tools/recover_experiments.py distill: worst / mean held-out cosine over
    200 digits, one seed; a worst cosine moves by ~0.005 between runs): hints at HINT_WEIGHT 1.0 helped the 50% cut of the inner
    convs (3,000 steps on 3,936 digits: 0.985 / 0.9979 with, 0.976 / 0.9973 without) and hurt the
    worst digit of the 75% stream cut (1,500 steps on 936 digits: 0.819 / 0.9840 with, 0.868 /
    0.9835 without): kept at 1.0. More distillation data helps most: the 75% stream cut, 6,000
    steps, 3,936 digits 0.942 / 0.9918, 936 digits 0.910 / 0.9891; the 50% cut, 3,000 steps
    with hints, 0.985 / 0.9979 vs 0.980 / 0.9974 (give the search all the unlabeled inputs
    there are). Batch 64 for 3,000 steps = batch 32 for 6,000 (0.933 / 0.9921
    vs 0.942 / 0.9918); a per-input relative logit error instead of the batch MSE (tried by
    hand) raised the 50% cut's worst digit a little (0.976 -> 0.982 without hints, 0.985 ->
    0.988 with) and lowered the 75% stream cut's (0.942 -> 0.936): near the noise, left out
    until more seeds say otherwise; re-estimating BatchNorm after
    training lowered the worst cosine in every run (0.985 -> 0.958 on the 50% cut). The worst
    held-out digits are the ones the teacher is least sure of (logit norm ~6-8 vs a median of
    11.6): 9 of 200 below 0.99 on the 50% cut after 6,000 steps, at a mean of 0.9972."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-candidate steps: threads cost more than they give
    try:
        return _distill_loop(student, teacher, x, budget_s, fresh, lr, temperature, batch_size,
                             seed, kept, hint_weight, steps, mix)
    finally:
        torch.set_num_threads(threads)


def _distill_loop(student, teacher, x, budget_s, fresh, lr, temperature, batch_size, seed,
                  kept, hint_weight, max_steps, mix):
    import torch
    import torch.nn.functional as F

    from ..compress.distill import soft_target_loss
    from ..compress.hints import hint_loss, hint_points, tapped

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    mean, std = float(xt.mean()), float(xt.std()) or 1.0
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    teacher.eval()
    hints = hint_points(teacher) if kept is not None and hint_weight > 0 else []
    t_run, s_run = _no_taps(teacher), _no_taps(student)
    if hints:  # both traced with the hint tensors as extra outputs; the student's shares weights
        try:
            t_run, s_run = tapped(teacher, hints, clone=True).eval(), tapped(student, hints)
        except Exception:  # noqa: BLE001 - a student fx traces differently: the outputs alone
            hints = []
    student.train()
    t0 = time.monotonic()
    steps, window, losses, hint_window, hint_losses = 0, [], [], [], []
    while True:
        # cosine decay over the time budget: large steps first, fine ones at the end (a long
        # final fine-tune at a constant rate ends wherever its last noisy steps left it)
        if max_steps:
            done = steps / max_steps
        else:
            done = min(1.0, (time.monotonic() - t0) / budget_s) if budget_s > 0 else 1.0
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * done))
        if fresh:
            xb = torch.randn((batch_size, *xt.shape[1:]), generator=gen) * std + mean
        else:
            xb = xt[torch.randint(len(xt), (min(batch_size, len(xt)),), generator=gen)]
            if mix > 0:  # function matching: the teacher labels mixtures of two inputs
                shape = (len(xb),) + (1,) * (xb.dim() - 1)
                other = xt[torch.randint(len(xt), (len(xb),), generator=gen)]
                w = (torch.rand(shape, generator=gen) < mix).to(xb.dtype) * \
                    torch.rand(shape, generator=gen)
                xb = xb * (1 - w) + other * w
        with torch.no_grad():
            tl, tf = t_run(xb)
            tl = _first(tl)
        sl, sf = s_run(xb)
        sl = _first(sl)
        loss = F.mse_loss(sl, tl) / (tl.var() + 1e-8)
        if sl.dim() >= 2 and sl.shape[1] > 1:
            loss = loss + soft_target_loss(sl, tl, temperature)
        if hints:
            h = hint_loss(sf, tf, hints, kept)
            loss = loss + hint_weight * (1.0 - done) * h
            hint_window.append(float(h.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        window.append(float(loss.detach()))
        if len(window) == 20:
            losses.append(sum(window) / 20)
            window = []
            if hint_window:
                hint_losses.append(sum(hint_window) / len(hint_window))
                hint_window = []
        if (steps >= max_steps) if max_steps else (time.monotonic() - t0 >= budget_s):
            break
    student.eval()
    if window:
        losses.append(sum(window) / len(window))
    if hint_window:
        hint_losses.append(sum(hint_window) / len(hint_window))
    out = {"steps": steps, "seconds": time.monotonic() - t0, "losses": losses}
    if hints:
        out.update(hints=[h.node for h in hints], hint_losses=hint_losses)
    return out


def _no_taps(module):
    """`module` called like a tapped one (compress/hints.py): (its output, no hint tensors)."""
    return lambda xb: (module(xb), ())


def _first(out):
    """The first tensor of a module's output (a tensor, or a tuple/list of them)."""
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass(frozen=True)
class Judge:
    """Scores an exported candidate, higher better: what decides between a distilled model and
    the one its distillation started from."""

    name: str  # e.g. "--eval" or "held-out cosine over 33 inputs"
    score: Callable[[Path], float]


STATE = "student.pt"  # the kept model's torch weights, next to its ONNX: a final continues them


def build_recovered(src: TorchSource, source_onnx: Path, ratio: float, budget_s: float,
                    batches: Sequence[dict[str, np.ndarray]], verify: Sequence[dict], floor: float,
                    workdir: Path, synthetic: bool = False,
                    start: tuple[Path, dict[str, Any]] | None = None,
                    judge: Judge | None = None, residual: bool = False
                    ) -> tuple[Path, dict[str, Any]]:
    """Prune a copy of the module (filters, lowest L1), export it; if its fidelity misses
    `floor`, distill it against the original and export again; the distilled model is kept only
    when its fidelity beats the one it started from. `start` = (ONNX path, recovery record) of
    an earlier recovery of the same prune (the final fine-tune's): training continues from the
    weights kept next to that file (STATE) instead of the freshly pruned ones. The kept model's
    weights are saved as STATE in `workdir`. `judge` decides whether the distilled model beats
    the one it started from (the user's `--eval`, or a held-out fidelity on more inputs than the
    few `verify` ones: a choice on 3 inputs keeps whichever model their noise favours); without
    one, the cosine over `verify` decides. `residual`: also prune residual streams, coupled
    across the blocks that add into them (compress/prune.py). Returns the final ONNX path and
    the recovery record (fidelity before/after, seconds, steps, the judge's scores)."""
    import torch

    from ..compress.prune import prune_filters
    from ..export.exporter import export_module
    from ..rewrite.recipe import fidelity_over

    student = copy.deepcopy(src.module)
    channel_map: dict = {}
    layers = prune_filters(student, ratio, residual=residual, kept=channel_map)
    if not any("kept" in r for r in layers):
        raise InputError("no Conv2d whose channels can be pruned here (grouped convs, or "
                         "channels that reach the output or an unsupported op)")
    before = workdir / "pruned.onnx"
    export_module(student, src.example, before)
    fid_before = fidelity_over(source_onnx, before, verify)
    rec: dict[str, Any] = {"ratio": ratio, "budget_s": budget_s,
                           "fidelity_before": fid_before.cosine, "fidelity_after": None,
                           "seconds": 0.0, "steps": 0,
                           "layers": [r for r in layers if "kept" in r]}
    kept, kept_fid = before, fid_before.cosine if fid_before.finite else -math.inf
    if start is not None:
        start_path, start_rec = Path(start[0]), start[1]
        # weights_only: a file of our own build dir, but never unpickle more than tensors
        student.load_state_dict(torch.load(start_path.parent / STATE, weights_only=True))
        kept, kept_fid = start_path, float(start_rec["fidelity_after"])
        rec.update(continued_from=start_rec.get("budget_s"), start_fidelity=kept_fid,
                   start_steps=start_rec.get("steps"), start_seconds=start_rec.get("seconds"))
    state = copy.deepcopy(student.state_dict())
    if start is None and (fid_before.finite and fid_before.cosine >= floor or budget_s <= 0):
        rec["fidelity_after"] = fid_before.cosine
        rec["recovered"] = False
        return _keep(before, rec, state, workdir)
    teacher = src.module
    x = inputs_of(batches)
    if start is None and not synthetic:  # re-estimated BatchNorm statistics: the first repair
        bn = _reestimate_bn(student, teacher, x, src.example, source_onnx, verify, workdir)
        if bn is not None:
            rec.update(fidelity_bn=bn[1])
            if bn[1] > kept_fid:
                kept, kept_fid, state = bn[0], bn[1], copy.deepcopy(student.state_dict())
                if kept_fid >= floor:  # statistics alone were enough: nothing to train
                    rec.update(fidelity_after=kept_fid, recovered=True)
                    return _keep(kept, rec, state, workdir)
            else:  # the unpruned statistics fitted better: train from those
                student.load_state_dict(state)
    run = distill_for(student, teacher, x, budget_s, fresh=synthetic, kept=channel_map)
    after = workdir / "recovered.onnx"
    export_module(student, src.example, after)
    fid_after = fidelity_over(source_onnx, after, verify)
    rec.update(seconds=run["seconds"], steps=run["steps"], losses=run["losses"],
               distilled_fidelity=fid_after.cosine,
               **{k: run[k] for k in ("hints", "hint_losses") if k in run})
    if judge is not None and fid_after.finite:
        scores = (judge.score(kept), judge.score(after))
        rec.update(judged_by=judge.name, start_score=scores[0], distilled_score=scores[1])
        better = math.isfinite(scores[1]) and not scores[1] <= scores[0]
    else:
        better = fid_after.finite and fid_after.cosine > kept_fid
    if not better:
        rec.update(fidelity_after=kept_fid,
                   recovered=bool(start is not None and start[1].get("recovered")),
                   note=f"distillation did not raise {judge.name if judge else 'fidelity'}; "
                        "the model it started from is kept")
        return _keep(kept, rec, state, workdir)
    rec.update(fidelity_after=fid_after.cosine, recovered=True)
    return _keep(after, rec, student.state_dict(), workdir)


def _reestimate_bn(student, teacher, x: np.ndarray, example, source_onnx: Path,
                   verify: Sequence[dict], workdir: Path) -> tuple[Path, float] | None:
    """Re-estimate the pruned `student`'s BatchNorm statistics on the distillation inputs
    (compress/batchnorm.py) and export it: (its ONNX, its cosine over `verify`), or None when it
    has no BatchNorm (or the export is not finite). The caller keeps whichever of the pruned
    statistics and the re-estimated ones scores higher."""
    from ..compress.batchnorm import reestimate
    from ..export.exporter import export_module
    from ..rewrite.recipe import fidelity_over

    if not reestimate(student, x):
        return None
    path = workdir / "bn_reestimated.onnx"
    export_module(student, example, path)
    fid = fidelity_over(source_onnx, path, verify)
    return (path, fid.cosine) if fid.finite else None


def _keep(path: Path, rec: dict[str, Any], state, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """Save the kept model's weights (atomically) for a later fine-tune to continue from."""
    import torch

    from ..fsutil import atomic_path

    with atomic_path(workdir / STATE) as tmp:
        torch.save(state, tmp)
    return path, rec


REACH = 2.0  # a final fine-tune is worth most on a miss within REACH allowances of the floor


def final_pick(missed: Sequence[Any], floor: float) -> Any:
    """Which missed torch-side prune gets the long final fine-tune: the deepest cut whose short
    recovery's shortfall (1 - fidelity) is within REACH times what the floor allows (1 - floor),
    else the closest miss (the smallest shortfall; the deeper cut on a tie). Fidelity is the
    search's: the cosine, or the user's --eval as a ratio to the original's score, so the same
    rule serves a cosine floor and an accuracy one.

    Why not simply the deepest miss: what a final buys is bounded. Measured (tools/
    bench_recover.py, finals continuing from their short recoveries' weights): the MNIST CNN cut
    75%, 767 -> 6,709 steps: shortfall 0.0073 -> 0.0042 (x0.57; floor allowance 0.0052, met);
    pytorch/examples' MNIST CNN cut 75%, 129 -> 1,371 steps: 0.0072 -> 0.0041 (x0.57, met); the
    ResNet-style digits net cut 75% with its streams, 346 -> 12,061 steps: 0.185 -> 0.158 (x0.85;
    allowance 0.01, missed: 600 s spent on a cut 18 allowances short, while the 50% cut was 2.0
    short). That cut was out of reach however trained: distilled afresh for 6,000 steps on four
    times the digits (3,936), its worst held-out cosine reached 0.942, still 5.8 allowances
    short, while the 50% cut reached 0.985 in 3,000 steps (1.5 short; tools/
    recover_experiments.py distill). A final narrows a shortfall by about half at
    best, so a miss more than REACH allowances short is out of its reach, and the time goes
    where it can pass the floor: a final that misses buys nothing, however fast its cut."""
    allowance = max(1.0 - floor, 1e-12)

    def shortfall(r) -> float:
        f = r.fidelity
        return 1.0 - float(f) if f is not None and math.isfinite(float(f)) else math.inf

    within = [r for r in missed if shortfall(r) <= REACH * allowance]
    if within:
        return max(within, key=_depth)
    return min(missed, key=lambda r: (shortfall(r), tuple(-v for v in _depth(r))))


def _depth(r) -> tuple[float, bool]:
    """How deep a torch-side prune cuts: its ratio, and a pruned stream cuts deeper."""
    f = dict(r.cand.steps[0][1])
    return float(f["ratio"]), bool(f.get("residual", False))


def final_candidates(rows: Sequence[Any], final_s: float, time_left: float, reserve: float, *,
                     floor: float) -> tuple[list[Any], str | None]:
    """NetAdapt's long-term fine-tune: after the short per-candidate recoveries, one torch-side
    prune still below the floor `floor` (its short recovery trained but did not get it there),
    chosen by final_pick (the deepest miss within reach of the floor, else the closest miss), is
    distilled for `final_s` seconds more, continuing from the weights its short recovery kept
    (a recipe of its own, `torch-prune:budget_s=FINAL,continue_s=SHORT,final=true,ratio=R`,
    cached and resumable like the short ones), with the int8 compositions the short one had.
    Called again after those are built: when that final one still misses the floor, the next
    one final_pick chooses among the rest gets its turn; once a final one meets it, there is
    nothing more. Returns (candidates, a note saying why there is none, or None). `rows` are the
    search's rows; nothing runs when `final_s` is not longer than the short budget, or when
    `time_left` minus `reserve` (the time kept for measuring) cannot hold it."""
    from .candidates import Candidate

    def torch_prune(r, final: bool) -> bool:
        return (not r.cand.options and len(r.cand.steps) == 1 and r.cand.steps[0][0] == STEP
                and bool(dict(r.cand.steps[0][1]).get("final")) == final)

    finals = [r for r in rows if torch_prune(r, True)]
    if final_s <= 0 or any(r.status == "ok" for r in finals):
        return [], None
    tried = {_depth(r) for r in finals}
    missed = [r for r in rows if torch_prune(r, False) and r.status == "rejected" and r.recovery
              and r.recovery.get("steps") and _depth(r) not in tried]
    if not missed:
        return [], None
    pick = final_pick(missed, floor)
    first = pick.cand.steps[0]
    fields = dict(first[1])
    if final_s <= float(fields["budget_s"]):
        return [], None
    if time_left - reserve < final_s:
        return [], (f"final fine-tune of {pick.cand.name} ({final_s:g} s) skipped: "
                    f"{max(time_left, 0):.0f} s of the time limit left, {reserve:.0f} s of it "
                    "kept for measuring")
    step = (STEP, tuple(sorted({**fields, "budget_s": final_s, "final": True,
                                "continue_s": fields["budget_s"]}.items())))
    out = [Candidate(pick.cand.family, (step,))]
    out += [Candidate(r.cand.family, (step, *r.cand.steps[1:])) for r in rows
            if not r.cand.options and len(r.cand.steps) > 1 and r.cand.steps[0] == first]
    return out, None
