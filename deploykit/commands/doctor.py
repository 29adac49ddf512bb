"""`deploykit doctor`: is this machine ready to measure latency, and if not, what to change."""

from __future__ import annotations

import argparse

HELP = "check this machine for measurement noise (load, governor, boost, SMT, thermal, quota)"
DESCRIPTION = """Report what makes this machine noisy for latency measurement, with what to
change: other processes' CPU load and the hypervisor's steal time (sampled for --seconds while
deploykit itself is idle), the CPU frequency governor and turbo boost, SMT siblings, thermal state
and throttling, the cgroup CPU quota and CPU affinity against the threads you will time with, and
isolated CPUs. Checks that this machine does not expose are reported as unknown.
Exit codes: 0 done, 2 usage error, 3 a check warns and --strict was given."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=2,
                   help="threads you will measure with (for the quota and affinity checks; "
                        "default 2)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="how long to sample other processes' load (default 2)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--strict", action="store_true",
                   help="exit 3 when any check warns (a CI step that refuses a noisy runner)")


def run(args: argparse.Namespace) -> int:
    import json

    from ..core import TimingPlan
    from ..errors import InputError
    from ..measure.machine import WARN, run_checks
    from ..validity import EXIT_NOT_CLEAN

    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    if not 0 < args.seconds <= 600:
        raise InputError(f"--seconds must be in (0, 600], got {args.seconds}")
    checks = run_checks(threads=args.threads, seconds=args.seconds,
                        threshold=TimingPlan.contamination_threshold)
    warns = [c for c in checks if c.status == WARN]
    if args.json:
        print(json.dumps({"ready": not warns, "checks": [c.to_dict() for c in checks]}, indent=1))
    else:
        _print(checks, warns)
    return EXIT_NOT_CLEAN if warns and args.strict else 0


def _print(checks, warns) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    style = {"ok": "green", "warn": "bold red", "info": "yellow", "unknown": "dim"}
    t = Table(title="deploykit doctor: is this machine ready to measure?")
    for c in ("check", "status", "value", "what to change"):
        t.add_column(c)
    for c in checks:
        s = style[c.status]
        t.add_row(c.name, f"[{s}]{c.status}[/{s}]", c.value, c.advice)
    console.print(t)
    console.print(f"{len(warns)} problem(s): " + ", ".join(c.name for c in warns) if warns else
                  "no problems found (unknown checks could not be read on this machine)")
