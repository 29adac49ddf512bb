"""Run the reference and the candidate with their paired tensors exposed as outputs, a chunk of
layers at a time (a big model never has all its intermediates in memory at once), and measure
per pair the accumulated error (full candidate vs full reference), the error the candidate's
layer introduces by itself (the layer alone, fed the reference's values of its inputs, on the
candidate's target) and what that error alone does to the model's outputs (injected into the
reference). Both graphs run on deploykit Targets, so runtimes can be compared too."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from .graphs import Exposed, Injected, Probe, boundary_value, probe_model
from .match import Pair, cut_layers, match
from .metrics import Stats
from .result import DebugResult, build_rows


def analyze(reference: str | Path, candidate: str | Path,
            batches: Sequence[Mapping[str, np.ndarray]], *, target: str = "ort-cpu",
            reference_target: str = "ort-cpu", chunk_layers: int = 32,
            chunk_mb: float = 512.0, introduced: bool = True, impact: bool = True
            ) -> DebugResult:
    """Per-layer errors of `candidate` against `reference` over `batches` (see module doc)."""
    from ..onnxio import load_onnx
    from .match import value_infos

    if not batches:
        raise InputError("debug needs at least one input batch")
    if chunk_layers < 1 or not chunk_mb > 0:
        raise InputError("debug: chunk size must be positive")
    t0 = time.perf_counter()
    ref, cand = load_onnx(reference), load_onnx(candidate)
    ref_in = {i.name for i in ref.graph.input} - {i.name for i in ref.graph.initializer}
    cand_in = {i.name for i in cand.graph.input} - {i.name for i in cand.graph.initializer}
    if ref_in != cand_in:
        raise InputError(f"the two models take different inputs: reference "
                         f"{sorted(ref_in)}, candidate {sorted(cand_in)}")
    missing = ref_in - set(batches[0])
    if missing:
        raise InputError(f"no data for model input(s) {', '.join(sorted(missing))}")
    ref_types, cand_types = value_infos(ref), value_infos(cand)
    pairs = match(ref, cand, ref_types, cand_types)
    if not pairs:
        raise InputError("the two models have no float tensor in common (by name, by "
                         "quantization or by op type): is the candidate made from the reference?")
    layers = cut_layers(cand, pairs) if introduced else {}
    cand2ref = {p.cand: p.ref for p in pairs}
    ref_t, cand_t = get_target(reference_target), get_target(target)
    outputs = [o.name for o in ref.graph.output if o.name not in ref_in]
    st = _State(pairs, layers, cand2ref, outputs, ref_types, cand_types, impact)
    n_chunks, max_bytes, size, i = 0, 0, min(chunk_layers, 8), 0
    with tempfile.TemporaryDirectory(prefix="deploykit-debug-") as tmp:
        while i < len(pairs):
            chunk = list(pairs[i:i + size])
            i += len(chunk)
            n_chunks += 1
            held = _run_chunk(st, ref, cand, chunk, batches, ref_t, cand_t,
                              Path(tmp) / f"c{n_chunks}-")
            max_bytes = max(max_bytes, held)
            per_pair = held / max(1, len(chunk))
            size = int(max(1, min(chunk_layers, chunk_mb * 2**20 // max(per_pair, 1))))
    acc, own, notes = st.acc, st.own, st.notes
    rows = build_rows(pairs, layers, acc, own, st.impact, notes, cand2ref)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    general = []
    if introduced and len(layers) < len(pairs):
        general.append(f"{len(pairs) - len(layers)} of {len(pairs)} tensors have no introduced "
                       "error (their layer could not be cut out alone)")
    return DebugResult(str(reference), str(candidate), ref_t.name, cand_t.name, tuple(rows),
                       len(batches), n_chunks, time.perf_counter() - t0, peak,
                       max_bytes / 2**20, tuple(general))


def get_target(name: str):
    """A registry target; ORT ones without spinning, as several sessions share the process."""
    from ..backends import registry as targets

    t = targets.get(name)
    return targets.get(name, allow_spinning=False) if t.config.get("backend") == "ort" else t


class _State:
    """What the chunks share: the pairing and the running statistics."""

    def __init__(self, pairs, layers, cand2ref, outputs, ref_types, cand_types, impact: bool):
        self.pairs, self.layers, self.cand2ref = pairs, layers, cand2ref
        self.outputs = outputs  # the reference's graph outputs
        self.ref_types, self.cand_types = ref_types, cand_types
        self.acc = {p.ref: Stats() for p in pairs}
        self.own = {r: Stats() for r in layers}
        self.impact = {r: Stats() for r in layers} if impact else {}
        self.notes: dict[str, str] = {}


def _run_chunk(st: _State, ref, cand, chunk: Sequence[Pair], batches, ref_t, cand_t,
               stem: Path) -> int:
    """One chunk of pairs over every batch; returns the most tensor bytes held at once."""
    lays = [st.layers[p.ref] for p in chunk if p.ref in st.layers]
    need = {p.ref for p in chunk} | {st.cand2ref[t] for lay in lays for t in lay.inputs
                                     if t in st.cand2ref}
    injected = [lay.pair.ref for lay in lays
                if lay.pair.ref in st.impact and lay.pair.ref not in st.outputs]
    if injected:
        need |= set(st.outputs)
    ref_outs = [p.ref for p in st.pairs if p.ref in need] + \
        [o for o in st.outputs if o in need and o not in {p.ref for p in st.pairs}]
    opened: list[Exposed] = []
    held = 0
    try:
        ref_x = Exposed(ref, st.ref_types, ref_outs, ref_t, Path(f"{stem}ref.onnx"))
        opened.append(ref_x)
        cand_x = Exposed(cand, st.cand_types, [p.cand for p in chunk], cand_t,
                          Path(f"{stem}cand.onnx"))
        opened.append(cand_x)
        probe = None
        for b, feeds in enumerate(batches):
            rv, cv = ref_x.run(feeds), cand_x.run(feeds)
            held = max(held, sum(v.nbytes for v in rv.values())
                       + sum(v.nbytes for v in cv.values()))
            for p in chunk:
                r, c = rv.get(p.ref), cv.get(p.cand)
                if r is None or c is None or not np.issubdtype(r.dtype, np.floating):
                    st.notes.setdefault(p.ref, "not a float tensor on both runtimes")
                elif r.shape != c.shape:
                    st.notes.setdefault(p.ref, f"shape {list(c.shape)} vs reference "
                                               f"{list(r.shape)}")
                else:
                    st.acc[p.ref].add(r, c)
            if lays and b == 0:
                probe = _probe_for(cand, lays, rv, st.cand2ref, feeds, st.cand_types, cand_t,
                                   Path(f"{stem}probe.onnx"), st.notes)
                if probe is not None:
                    opened.append(probe)
            if probe is None:
                continue
            out = probe.run(_probe_feeds(st, lays, rv, feeds))
            for k, lay in enumerate(lays):
                r, c = rv.get(lay.pair.ref), out.get(f"L{k}/{lay.pair.cand}")
                if r is not None and c is not None and r.shape == c.shape:
                    st.own[lay.pair.ref].add(r, c)
                    if lay.pair.ref in st.outputs and lay.pair.ref in st.impact:
                        st.impact[lay.pair.ref].add(r, c)  # an output's own error: its impact
        if probe is not None:
            for k, lay in enumerate(lays):
                if lay.pair.ref in injected:
                    _impact(st, ref, ref_x, probe, lays, k, batches, ref_t,
                            Path(f"{stem}inj{k}.onnx"))
    finally:
        for x in opened:
            x.close()
        for f in stem.parent.glob(stem.name + "*"):
            f.unlink(missing_ok=True)
    return held


def _probe_feeds(st: _State, lays, rv, feeds) -> dict[str, np.ndarray]:
    return {f"L{k}/{t}": boundary_value(t, rv, st.cand2ref, feeds, st.cand_types)
            for k, lay in enumerate(lays) for t in lay.inputs}


def _impact(st: _State, ref, ref_x, probe, lays, k: int, batches, ref_t, path: Path) -> None:
    """Layer k's own output injected into the reference, alone: one session per layer, batches
    replayed (the reference and the chunk's probe rerun), so nothing is kept across batches."""
    lay = lays[k]
    t = lay.pair.ref
    inj = Injected(ref, [t], st.ref_types, ref_t, path)
    try:
        for feeds in batches:
            rv = ref_x.run(feeds)
            c = probe.run(_probe_feeds(st, lays, rv, feeds)).get(f"L{k}/{lay.pair.cand}")
            if c is None or t not in rv or c.shape != rv[t].shape:
                return
            got = inj.run({**feeds, t: c.astype(rv[t].dtype, copy=False)})
            for o in st.outputs:
                if o in rv and o in got and np.issubdtype(rv[o].dtype, np.floating):
                    st.impact[t].add(rv[o], got[o])
    finally:
        inj.close()
        path.unlink(missing_ok=True)  # a whole model per layer: do not let them pile up


def _probe_for(cand, chunk_layers_, rv, cand2ref, feeds, types, target, path, notes):
    """The chunk's layers compiled side by side, or None (with a note) when the runtime refuses."""
    import onnx

    from ..errors import DeployKitError

    try:
        model = probe_model(cand, chunk_layers_, rv, cand2ref, feeds, types)
        onnx.save(model, str(path))
        return Probe(path, target)
    except (DeployKitError, KeyError, ValueError) as e:
        for lay in chunk_layers_:
            notes.setdefault(lay.pair.ref, f"layer alone not runnable: {str(e).splitlines()[0]}")
        return None


