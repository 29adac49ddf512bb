"""`deploykit package MODEL --target T -o BUNDLE/`: what ships to the device, self-checking."""

from __future__ import annotations

import argparse

from . import _common

HELP = "build a self-checking deployment bundle (model for the target, golden I/O, manifest)"
DESCRIPTION = """Package a model for a target into a folder: ORT targets get the offline-optimized
.onnx, its ORT-format .ort and the operator config of an ORT minimal build; TVM targets get the
compiled library, the TVM runtime libraries and a C++ runner built for the device (cross-compiled
for aarch64). Every bundle has golden input/output tensors, a self-test (selftest.py, and
selftest.sh for TVM) and manifest.json with io specs, ids and lineage, the measured latency, the
fidelity against the input model, sizes and the sha256 of every file. Check it with
`deploykit verify`."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".onnx model (e.g. a compress or search output)")
    p.add_argument("--output", "-o", required=True, metavar="BUNDLE", help="bundle folder to write")
    _common.add_target_args(p)
    p.add_argument("--no-measure", action="store_true",
                   help="do not profile the model on the target (the manifest says so)")
    p.add_argument("--original", metavar="ONNX",
                   help="the uncompressed model: fidelity against it goes into the manifest")
    p.add_argument("--ort-platform", choices=("amd64", "arm"),
                   help="ORT converter platform (arm drops x86-only NCHWc layouts; "
                        "default: this machine's)")
    p.add_argument("--tvm-runtime", metavar="DIR",
                   help="folder with the device's libtvm_runtime.so and libtvm_ffi.so, a "
                        "site-packages, or aarch64 apache-tvm wheels (default: "
                        "$DEPLOYKIT_TVM_RUNTIME_AARCH64, the emulated device's install, "
                        "deploykit's cache, else pip download)")
    p.add_argument("--atol-frac", type=float, default=None,
                   help="golden tolerance: atol = this x max|output| (default by dtype: fp32 1e-4, "
                        "fp16 1e-3, int8 1e-2)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--device", help="ssh://USER@HOST[:PORT][/DIR] or adb://SERIAL[/DIR]: push the "
                   "ORT bundle, self-test and time it there; or an RPC device key (remote TVM "
                   "targets, with --tracker)")
    p.add_argument("--tracker", help="RPC tracker HOST:PORT (remote TVM targets)")
    _common.add_input_args(p)
    _common.add_plan_args(p)
    _common.add_store_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..backends import registry as targets
    from ..errors import InputError
    from ..api import package

    if args.atol_frac is not None and not args.atol_frac > 0:
        raise InputError(f"--atol-frac must be positive, got {args.atol_frac}")
    from pathlib import Path

    from ..bundle.package import check_bundle_dest

    check_bundle_dest(Path(args.output), args.force)
    plan = _common.plan_from_args(args)
    shapes = tuple(_common.parse_shapes(args.shape).items())
    store_file = _common.check_store(args)
    store = store_file  # a StoreLocation (file or server) or None
    from ..bundle.transport import is_url, parse

    transport = parse(args.device) if is_url(args.device) else None
    if transport is not None and args.tracker:
        raise InputError("--tracker is for TVM RPC device keys, not for ssh:// or adb://")
    if transport is not None:  # measured on the device after packaging, not here
        target = targets.get(args.target, require_available=False, threads=args.threads)
        if target.config.get("backend") not in ("ort", "tvm", "openvino"):
            raise InputError(f"--device {transport.where}: ssh:// and adb:// devices run ORT, "
                             f"OpenVINO and TVM bundles; '{target.name}' is "
                             f"{target.config.get('backend')}")
    else:
        target = targets.get(args.target, require_available=not args.no_measure,
                             threads=args.threads, device=args.device, tracker=args.tracker)
    opts = dict(measure=not args.no_measure and transport is None, plan=plan, seed=args.seed,
                shapes=shapes, inputs_npz=args.inputs, original=args.original,
                ort_platform=args.ort_platform, atol_frac=args.atol_frac,
                tvm_runtime=args.tvm_runtime, store=store)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="deploykit-package-") as tmp:
        _, source = _common.take_in(args.model, tmp, name=Path(args.model).name)
        m = package(source, target, args.output, force=args.force, **opts)
    sizes = m["sizes"]
    print(f"bundle {args.output} for {target.name}: {sizes['total_bytes'] / 1e6:.2f} MB, of which "
          f"{sizes['payload_bytes'] / 1e6:.2f} MB run on the device "
          f"({', '.join(m['runtime']['payload'])}):")
    for rel, size in m["sizes"]["files"].items():
        print(f"  {rel:<40} {size:>12,d} B")
    lat = m.get("latency")
    if lat:
        lo, hi = lat["ci95_ms"]
        labels = f" [{', '.join(lat['labels'])}]" if lat["labels"] else ""
        print(f"latency: median {lat['median_ms']:.3f} ms (95% CI {lo:.3f}-{hi:.3f}){labels}")
    for f in m["fidelity"]:
        if "max_abs" in f:
            print(f"fidelity vs {f['against']} ({f['measured_with']}): max abs {f['max_abs']:.2e}, "
                  f"max rel {f['max_rel']:.2e}")
        else:
            print(f"fidelity vs {f['against']}: {f['note']}")
    print(f"self-test: {m['selftest']['command']}   (or: deploykit verify {args.output})")
    if transport is not None:
        return _on_device(args, target, transport, plan, store)
    return 0


def _on_device(args, target, transport, plan, store) -> int:
    """The new bundle pushed, self-tested and (unless --no-measure) timed on the device; the
    timing is stored (label "package"), the bundle itself is left as packaged."""
    from ..bundle.device_run import device_labels, first_problem, passed, run_on_device
    from ..errors import VerificationError

    labels = device_labels(target.config)
    run = run_on_device(transport, args.output, timing=not args.no_measure,
                        max_time_s=plan.max_time_s, threads=target.threads,
                        rel_ci=plan.target_rel_ci, labels=labels)
    if not passed(run):
        raise VerificationError(f"{transport.where}: the bundle {args.output} failed its "
                                f"self-test on the device: {first_problem(run)}")
    print(f"on {run.where} ({run.runtime}): self-test passed; {len(run.pushed)} file(s) pushed")
    rep = run.report
    if rep is not None:
        lo, hi = rep.ci95_ms
        tag = f" [{', '.join(rep.labels)}]" if rep.labels else ""
        print(f"latency on the device: median {rep.median_ms:.3f} ms (95% CI {lo:.3f}-{hi:.3f}), "
              f"{len(rep.samples_ms)} samples, {rep.validity.state}{tag}")
        if store is not None:
            from ..core import ModelRef
            from ..store import Store

            with Store(store) as s:
                s.record_report(rep, label="package", model=ModelRef.from_path(args.model))
    return 0
