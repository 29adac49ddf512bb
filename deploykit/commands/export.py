"""`deploykit export`: torch factory or .onnx -> checked, simplified, verified ONNX + facts."""

from __future__ import annotations

import argparse

from . import _common

HELP = "export a torch factory (file.py:build) or an .onnx file to a verified, simplified ONNX"
DESCRIPTION = """Export a model to ONNX and verify it. SOURCE is path/to/file.py:factory (the
factory returns an nn.Module; an optional example_inputs() in the same file gives the inputs,
else --shape) or an .onnx file. Each model goes through onnx.checker, shape inference and onnxsim
(a failed simplification is a warning), then torch and ONNX Runtime run the same seeded inputs
(not the tracing inputs); beyond fp32 tolerance (max error 1e-4 of the output's scale) the export
fails. The dynamo exporter is tried first; the TorchScript exporter is the fallback when dynamo
fails or its model does not verify (the reason is shown). Nothing is written on failure.
For an .onnx SOURCE, the simplified model is verified against the original on ONNX Runtime."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="path/to/file.py:factory or model.onnx")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="input shape (repeatable); overrides example_inputs()")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="make axis 0 of every input a symbolic 'batch' dim (verified at 2 sizes)")
    p.add_argument("--dynamic-axis", action="append", default=[], metavar="NAME=AXIS:DIM",
                   help="make input NAME's AXIS a symbolic dim named DIM (repeatable)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: exporter's)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.add_argument("--weights", metavar="CKPT.pt",
                   help="state dict to load into the factory's model (loaded weights_only)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a checkpoint that needs pickle (runs code from the file: only for "
                        "files you trust)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights init and test inputs")
    p.add_argument("--json", metavar="FACTS.json", help="write verification + facts as JSON")
    p.add_argument("--top", type=int, default=8, help="nodes listed by FLOPs (default 8)")
    _common.add_store_arg(p)


def _dynamic_axes(items: list[str]) -> dict[str, dict[int, str]]:
    from ..errors import InputError

    axes: dict[str, dict[int, str]] = {}
    for item in items:
        name, _, rest = item.partition("=")
        ax, _, dim = rest.partition(":")
        try:
            axis = int(ax)
        except ValueError:
            axis = None
        if not name or axis is None or not dim.isidentifier():
            raise InputError(f"bad --dynamic-axis {item!r}: expected NAME=AXIS:DIM, e.g. x=0:batch")
        axes.setdefault(name, {})[axis] = dim
    return axes


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from ..api import export
    from ..errors import InputError
    from ..outputs import Outputs, check_distinct, check_output_file

    check_output_file(args.output, "-o", suffix=".onnx")
    if args.opset is not None and not 7 <= args.opset <= 30:
        raise InputError(f"--opset {args.opset} is out of range (7-30; ONNX Runtime here runs "
                         "up to the opset its onnx release knows): pass e.g. --opset 17")
    check_output_file(args.json, "--json")
    check_distinct(**{"-o": args.output, "--json": args.json})
    store_file = _common.check_store(args)
    shapes = _common.parse_shapes(args.shape)
    axes = _dynamic_axes(args.dynamic_axis) or None
    with Outputs() as outs:
        staged = outs.path(args.output)
        result = export(args.source, output=staged, input_shapes=shapes,
                        dynamic_batch=args.dynamic_batch, dynamic_axes=axes, opset=args.opset,
                        simplify=not args.no_simplify, seed=args.seed, weights=args.weights,
                        trust_pickle=args.trust_pickle)
        result = replace(result, model=replace(result.model, path=Path(args.output)))
        if args.json:
            outs.json(args.json, result.to_dict())
        if store_file is not None:  # lineage: `deploykit history --lineage MODEL` starts here
            from ..store import Store

            with Store(store_file) as store:
                store.record_model(result.model)
        outs.commit()
    print_result(result, top=args.top)
    return 0


def _si(x: float, unit: str) -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def print_result(r, top: int = 8) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    f = r.facts
    t = Table(title=f"exported {r.model.path}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("exporter", r.exporter + ("" if r.exporter_note is None else
                                        f"  [yellow]({r.exporter_note})[/yellow]"))
    t.add_row("inputs", ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in r.inputs))
    t.add_row("outputs", ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in r.outputs))
    t.add_row("opset / nodes", f"{f['opset']} / {f['nodes']} "
                               f"({'simplified' if r.simplified else 'not simplified'})")
    t.add_row("parameters", f"{f['parameters']:,} ({_si(f['weight_bytes'], 'B')} of weights)")
    t.add_row("file size", _si(f["file_bytes"], "B"))
    dims = ", ".join(f"{k}={v}" for k, v in f["assumed_dims"].items())
    t.add_row("compute", f"{_si(f['flops'], 'FLOP')} ({_si(f['macs'], 'MAC')})"
                         + (f" at {dims}" if dims else ""))
    if f["uncounted_nodes"]:
        t.add_row("not counted", f"{len(f['uncounted_nodes'])} nodes with unknown shapes or "
                                 f"subgraphs")
    t.add_row("sha256", r.model.sha256)
    for w in r.warnings:
        t.add_row("warning", f"[yellow]{w}[/yellow]")
    console.print(t)
    if r.checks:
        v = Table(title=f"verification against {r.reference} (seeded inputs)")
        for c in ("output", "shape", "max abs err", "max rel err", "cosine", "result"):
            v.add_column(c, justify="left" if c in ("output", "result") else "right")
        for c in r.checks:
            v.add_row(c.output, "x".join(map(str, c.shape)), f"{c.max_abs:.2e}",
                      f"{c.max_rel:.2e}", f"{c.cosine:.8f}",
                      "[green]ok[/green]" if c.ok else f"[red]{c.failure}[/red]")
        console.print(v)
    else:
        console.print("verification: model unchanged by export (nothing to compare)")
    nodes = sorted(f["per_node"], key=lambda n: -n["flops"])[:top]
    if nodes and f["flops"]:
        n_t = Table(title=f"top {len(nodes)} nodes by FLOPs")
        for c in ("node", "op type", "FLOPs", "share"):
            n_t.add_column(c, justify="left" if c in ("node", "op type") else "right")
        for n in nodes:
            n_t.add_row(n["name"], n["op_type"] + (" (int8)" if n["int8"] else ""),
                        _si(n["flops"], ""), f"{n['flops'] / f['flops']:.1%}")
        console.print(n_t)
