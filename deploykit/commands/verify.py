"""`deploykit verify BUNDLE/`: run a bundle's self-test here, emulated, or on an RPC device."""

from __future__ import annotations

import argparse

HELP = "run a bundle's self-test (hashes + golden outputs) locally or on a device over RPC"
DESCRIPTION = """Check a bundle written by `deploykit package`: the sha256 of every file and the
manifest's own digest, then the bundle's model on the golden inputs against the golden outputs at
the recorded tolerance. TVM bundles run through their C++ runner (under qemu-user when built for
another architecture) or, with --device/--tracker, on a device over TVM RPC. Exit 0 when it
passes, 1 when verification fails, 2 when the folder is missing or not a readable bundle."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    p.add_argument("--device", help="ssh://USER@HOST[:PORT][/DIR] or adb://SERIAL[/DIR] (ORT "
                   "bundles: pushed and self-tested there), or an RPC device key (TVM bundles; "
                   "with --tracker)")
    p.add_argument("--tracker", help="RPC tracker HOST:PORT")
    p.add_argument("--python", action="store_true",
                   help="TVM bundles: run with this machine's tvm Python runtime, not the runner")
    p.add_argument("--repeat", type=int, default=1,
                   help="C++ runner: run the model N times and print the median (default 1)")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON")


def run(args: argparse.Namespace) -> int:
    import sys

    from ..api import verify
    from ..errors import InputError
    from ..fsutil import write_json

    from ..outputs import check_output_file

    check_output_file(args.json, "--json")
    if args.repeat < 1:
        raise InputError(f"--repeat must be >= 1, got {args.repeat}")
    res = verify(args.bundle, device=args.device, tracker=args.tracker, python=args.python,
                 repeat=args.repeat)
    print(f"self-test of {args.bundle} with {res.how}:")
    lines = res.lines()
    for line in lines[:-1]:
        print(f"  {line}")
    if res.timing:
        print(f"  {res.timing}")
    print(f"{lines[-1]} ({res.seconds:.2f} s)")
    if args.json:
        write_json(args.json, (
            {"ok": res.ok, "how": res.how, "problems": list(res.problems), "outputs": list(res.rows),
             "seconds": res.seconds, "timing": res.timing, "labels": list(res.labels)}))
    if res.problems:
        more = f" (and {len(res.problems) - 1} more, listed above)" if len(res.problems) > 1 else ""
        print(f"deploykit: error: bundle {args.bundle} failed its integrity check, so nothing of it "
              f"was loaded or run: {res.problems[0]}{more}; re-package it with `deploykit "
              f"package`", file=sys.stderr)
    return 0 if res.ok else 1
