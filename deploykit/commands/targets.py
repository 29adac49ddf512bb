"""`deploykit targets`: the registry, and whether each target is usable here."""

from __future__ import annotations

import argparse

HELP = "list targets and whether each is usable on this machine"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def run(args: argparse.Namespace) -> int:
    import json

    from ..backends import registry as targets
    from ..errors import DeployKitError

    rows = []
    for name, desc in sorted(targets.load_all().items()):
        try:
            reason = targets.get(name, require_available=False).unavailable_reason()
        except DeployKitError as e:  # a target whose backend module cannot load
            reason = str(e)
        except ImportError as e:
            reason = f"backend not installed ({e.name})"
        rows.append({"name": name, "backend": desc["backend"],
                     "description": desc.get("description", ""), "threads": desc.get("threads"),
                     "available": reason is None, "reason": reason, "file": desc["_file"]})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="targets")
    for c in ("name", "backend", "threads", "status", "description"):
        t.add_column(c)
    for r in rows:
        status = "[green]available[/green]" if r["available"] else f"[red]unavailable: {r['reason']}[/red]"
        t.add_row(r["name"], r["backend"], str(r["threads"]), status, r["description"])
    Console().print(t)
    return 0
