"""Run the reference and the candidate with their paired tensors exposed as outputs, a chunk of
layers at a time (a big model never has all its intermediates in memory at once), and measure
per pair the accumulated error (full candidate vs full reference), the error the candidate's
layer introduces by itself (the layer alone, fed the reference's values of its inputs, on the
candidate's target) and what that error alone does to the model's outputs (injected into the
reference). Both graphs run on deploykit Targets, so runtimes can be compared too."""

from __future__ import annotations

import math
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from .match import Layer, Pair, cut_layers, match
from .metrics import Metric, Stats

_NP = {1: np.float32, 10: np.float16, 11: np.float64}
RANKS = ("introduced", "output", "accumulated", "total")


@dataclass(frozen=True)
class Row:
    pair: Pair
    acc: Metric | None  # accumulated: whole candidate vs whole reference
    own: Metric | None  # introduced: the candidate layer alone on the reference's inputs
    # what that introduced error alone does to the model's outputs (the layer's output injected
    # into the reference, everything else exact): its sensitivity, where local figures mislead
    impact: Metric | None
    # the accumulated error this layer adds, as an SQNR: 10 log10(1 / (NSR_out - worst NSR_in))
    # with NSR = 10^(-SQNR/10); +inf when it adds none (damage only inherited), lower is worse
    added_db: float | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.pair.ref, "candidate_tensor": self.pair.cand,
                "matched_by": self.pair.how, "op_type": self.pair.op_type,
                "reference_node": self.pair.ref_node, "candidate_node": self.pair.cand_node,
                "depth": self.pair.depth,
                "accumulated": None if self.acc is None else self.acc.to_dict(),
                "introduced": None if self.own is None else self.own.to_dict(),
                "output_impact": None if self.impact is None else self.impact.to_dict(),
                "added_error_sqnr_db": _finite(self.added_db), "note": self.note}


@dataclass(frozen=True)
class DebugResult:
    reference: str
    candidate: str
    reference_target: str
    target: str
    rows: tuple[Row, ...]  # in depth order
    batches: int
    chunks: int
    seconds: float
    peak_rss_mb: float  # the whole process's peak resident memory
    max_chunk_mb: float  # the largest set of exposed tensors held at once
    notes: tuple[str, ...] = field(default_factory=tuple)

    def ranked(self, by: str = "introduced") -> list[Row]:
        """Worst first. `introduced`: the layer's own error; `output`: what that error alone
        does to the model's outputs; `accumulated`: the SQNR the accumulated error gains at this
        layer (added_db); `total`: accumulated error as it stands."""
        def key(r: Row) -> float:
            if by in ("introduced", "output"):
                m = (r.impact if by == "output" else None) or r.own or r.acc
                return m.badness if m else -math.inf
            if by == "accumulated":
                if r.acc is not None and not r.acc.finite:
                    return math.inf
                return -r.added_db if r.added_db is not None else -math.inf
            return r.acc.badness if r.acc else -math.inf
        if by not in RANKS:
            raise InputError(f"rank by {', '.join(RANKS)}, got {by!r}")
        return sorted(self.rows, key=lambda r: (-key(r), r.pair.depth))

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "candidate": self.candidate,
                "reference_target": self.reference_target, "target": self.target,
                "batches": self.batches, "chunks": self.chunks, "seconds": self.seconds,
                "peak_rss_mb": self.peak_rss_mb, "max_chunk_mb": self.max_chunk_mb,
                "notes": list(self.notes),
                "ranked_introduced": [r.pair.ref for r in self.ranked("introduced")],
                "ranked_output": [r.pair.ref for r in self.ranked("output")],
                "ranked_accumulated": [r.pair.ref for r in self.ranked("accumulated")],
                "layers": [r.to_dict() for r in self.rows], "schema": 1}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _value_info(name: str, infos: Mapping[str, Any], rename: str | None = None):
    """The inferred ValueInfo of `name` (as `rename`), else its element type with an empty shape
    (runtimes merge the real shape leniently; onnx.checker wants a type)."""
    import onnx

    vi = onnx.ValueInfoProto()
    if name in infos:
        vi.CopyFrom(infos[name])
    else:
        vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        vi.type.tensor_type.shape.SetInParent()
    vi.name = rename or name
    return vi


class _Exposed:
    """One model file whose outputs are replaced by the tensors asked for, compiled on a target."""

    def __init__(self, model, types, names: Sequence[str], target, path: Path):
        import onnx

        from ..core import ModelRef

        saved = list(model.graph.output)
        del model.graph.output[:]
        model.graph.output.extend(_value_info(n, types) for n in names)
        try:
            onnx.save(model, str(path))
        finally:
            del model.graph.output[:]
            model.graph.output.extend(saved)
        self.art = target.compile(ModelRef.from_path(path))
        self.names = [s.name for s in self.art.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = {s.name for s in self.art.inputs}
        return dict(zip(self.names, self.art.run({k: v for k, v in feeds.items() if k in wanted})))

    def close(self) -> None:
        self.art.close()


class _Injected(_Exposed):
    """The reference with some tensors cut into graph inputs (their producers write to a dead
    name): fed the reference's own values for all but one, and the candidate layer's output for
    that one, its outputs show what that layer's error alone does to the model."""

    def __init__(self, model, tensors: Sequence[str], infos, target, path: Path):
        import onnx

        from ..core import ModelRef

        cut = set(tensors)
        touched = [(n, list(n.output)) for n in model.graph.node if cut & set(n.output)]
        for n, outs in touched:
            n.output[:] = [o + "__dk_cut" if o in cut else o for o in outs]
        n_in = len(model.graph.input)
        model.graph.input.extend(_value_info(t, infos) for t in tensors)
        try:
            onnx.save(model, str(path))
        finally:
            for n, outs in touched:
                n.output[:] = outs
            del model.graph.input[n_in:]
        self.art = target.compile(ModelRef.from_path(path))
        self.names = [s.name for s in self.art.outputs]


def _probe_model(cand, layers: Sequence[Layer], ref_vals: Mapping[str, np.ndarray],
                 cand2ref: Mapping[str, str], feeds: Mapping[str, np.ndarray],
                 infos: Mapping[str, Any]):
    """One graph holding every layer of a chunk side by side (tensors prefixed L<i>/), each
    with its own inputs: one compile per chunk instead of one per layer."""
    import onnx
    from onnx import helper

    inits = {i.name: i for i in cand.graph.initializer}
    nodes, inputs, outputs, used_inits = [], [], [], set()
    for i, layer in enumerate(layers):
        pre = f"L{i}/"
        def ren(t: str, pre: str = pre) -> str:
            return t if (not t or t in inits) else pre + t
        for t in layer.inputs:
            v = _boundary_value(t, ref_vals, cand2ref, feeds, infos)
            inputs.append(helper.make_tensor_value_info(
                pre + t, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)))
        for n in layer.nodes:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.name = pre + (n.name or n.op_type)
            m.input[:] = [ren(t) for t in n.input]
            m.output[:] = [ren(t) for t in n.output]
            used_inits.update(t for t in n.input if t in inits)
            nodes.append(m)
        outputs.append(_value_info(layer.pair.cand, infos, pre + layer.pair.cand))
    graph = helper.make_graph(nodes, "deploykit-debug-layers", inputs, outputs,
                              [inits[n] for n in sorted(used_inits)])
    model = helper.make_model(graph, opset_imports=list(cand.opset_import))
    model.ir_version = cand.ir_version
    model.functions.extend(cand.functions)
    return model


def _boundary_value(t: str, ref_vals, cand2ref, feeds, infos) -> np.ndarray:
    """The reference's value for candidate tensor `t`, in the candidate's float type."""
    v = ref_vals[cand2ref[t]] if t in cand2ref else feeds[t]
    want = _NP.get(infos[t].type.tensor_type.elem_type) if t in infos else None
    return v.astype(want) if want is not None and v.dtype != want else v


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
    rows = _rows(pairs, layers, acc, own, st.impact, notes, cand2ref)
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
    opened: list[_Exposed] = []
    held = 0
    try:
        ref_x = _Exposed(ref, st.ref_types, ref_outs, ref_t, Path(f"{stem}ref.onnx"))
        opened.append(ref_x)
        cand_x = _Exposed(cand, st.cand_types, [p.cand for p in chunk], cand_t,
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
    return {f"L{k}/{t}": _boundary_value(t, rv, st.cand2ref, feeds, st.cand_types)
            for k, lay in enumerate(lays) for t in lay.inputs}


def _impact(st: _State, ref, ref_x, probe, lays, k: int, batches, ref_t, path: Path) -> None:
    """Layer k's own output injected into the reference, alone: one session per layer, batches
    replayed (the reference and the chunk's probe rerun), so nothing is kept across batches."""
    lay = lays[k]
    t = lay.pair.ref
    inj = _Injected(ref, [t], st.ref_types, ref_t, path)
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
        model = _probe_model(cand, chunk_layers_, rv, cand2ref, feeds, types)
        onnx.save(model, str(path))
        return _Probe(path, target)
    except (DeployKitError, KeyError, ValueError) as e:
        for lay in chunk_layers_:
            notes.setdefault(lay.pair.ref, f"layer alone not runnable: {str(e).splitlines()[0]}")
        return None


class _Probe(_Exposed):
    def __init__(self, path: Path, target):  # the model file is already written
        from ..core import ModelRef

        self.art = target.compile(ModelRef.from_path(path))
        self.names = [s.name for s in self.art.outputs]


def _rows(pairs, layers, acc, own, impact, notes, cand2ref) -> list[Row]:
    accm = {p.ref: acc[p.ref].metric() for p in pairs if acc[p.ref].count}
    rows = []
    for p in pairs:
        a = accm.get(p.ref)
        o = own[p.ref].metric() if p.ref in own and own[p.ref].count else None
        imp = impact[p.ref].metric() if p.ref in impact and impact[p.ref].count else None
        added = None
        if a is not None and p.ref in layers:
            nsr_in = max((_nsr(accm[cand2ref[t]]) for t in layers[p.ref].inputs
                          if cand2ref.get(t) in accm), default=0.0)  # graph inputs arrive exact
            gain = 0.0 if nsr_in == math.inf else _nsr(a) - nsr_in
            added = -math.inf if gain == math.inf else (
                -10.0 * math.log10(gain) if gain > 0 else math.inf)
        rows.append(Row(p, a, o, imp, added, notes.get(p.ref)))
    return rows


def _nsr(m: Metric) -> float:
    """Error power over signal power (0 when exact, inf when the output is not finite)."""
    if not m.finite:
        return math.inf
    return 0.0 if m.sqnr_db == math.inf else 10.0 ** (-m.sqnr_db / 10.0)
