"""`deploykit devices`: the devices registered with a TVM RPC tracker, free and busy."""

from __future__ import annotations

import argparse

HELP = "list the devices registered with a TVM RPC tracker (keys, free/busy, queue)"
DESCRIPTION = """List the device keys registered with a TVM RPC tracker, how many are free or busy,
and how many requests wait. Profile on any device of a key with
`deploykit profile MODEL --target tvm-aarch64 --device KEY --tracker HOST:PORT` (queues while all
are busy). An RPC server runs whatever code a client uploads: keep trackers and servers on
loopback or a trusted network."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracker", required=True, metavar="HOST:PORT", help="RPC tracker address")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from ..backends.tvm.rpc import tracker_devices

    rows = tracker_devices(args.tracker)
    if args.json:
        print(json.dumps([{**asdict(r), "busy": r.busy} for r in rows], indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"devices at tracker {args.tracker}")
    for c in ("key", "total", "free", "busy", "queued", "servers"):
        t.add_column(c)
    for r in rows:
        t.add_row(r.key, str(r.total), str(r.free), str(r.busy), str(r.pending),
                  ", ".join(r.addresses))
    Console().print(t if rows else f"no devices registered with tracker {args.tracker}")
    return 0
