"""`deploykit history`: the runs in the results store; `--trend` flags change points."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from . import _common

HELP = "list stored runs; --trend flags change points in a model's latency series"
DESCRIPTION = """List the runs recorded in the results store (newest first). --model takes a
sha256 (or a prefix) or a model path: a path selects every version of that file, which is the
series a CI job builds up as the model changes. --trend looks for change points in the series of
run medians per model path and target (e-divisive with a permutation test, as in MongoDB's CI).
Every run shows its measurement state (clean / contaminated / unstable); --trend leaves out runs
taken under foreign load (their medians measure the load, not the model) unless
--include-contaminated is given."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", metavar="SHA|PATH", help="sha256 (prefix) or model path")
    p.add_argument("--target", "-t", help="only runs on this target")
    p.add_argument("--limit", "-n", type=int, default=20, help="rows to list (default 20)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--lineage", metavar="SHA|PATH",
                   help="how a model was made: it and its ancestors (transform, config), newest "
                        "first")
    p.add_argument("--trend", action="store_true",
                   help="flag change points in each model's median series")
    p.add_argument("--include-contaminated", action="store_true",
                   help="let --trend use runs measured under foreign load too")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="significance level of a change point (default 0.01)")
    p.add_argument("--store", default=None,
                   help="results database (default $DEPLOYKIT_STORE or the per-user data dir)")


def _select(store, model: str | None, target: str | None):
    """All matching runs, newest first."""
    if not model:
        return store.runs(target=target)
    p = Path(model)
    if p.is_file():
        from ..fsutil import sha256_file

        found = {r.id: r for r in store.runs(model=sha256_file(p), target=target)}
        for path in {model, str(p.resolve())}:
            found.update({r.id: r for r in store.runs(model_path=path, target=target)})
        return sorted(found.values(), key=lambda r: (r.created, r.id), reverse=True)
    if re.fullmatch(r"[0-9a-fA-F]{4,64}", model):
        return store.runs(model=model, target=target)
    return store.runs(model_path=model, target=target)


def _trends(rows, alpha: float, include_contaminated: bool = False):
    """{(model path or sha, target): (series oldest first, change points)}; contaminated runs
    are left out of the series unless asked for."""
    from ..gate.changepoints import change_points

    groups: dict[tuple[str, str], list] = {}
    for r in sorted(rows, key=lambda r: (r.created, r.id)):
        if r.state == "contaminated" and not include_contaminated:
            continue
        groups.setdefault((r.model_path or r.model_sha256[:12], r.target), []).append(r)
    out = {}
    for key, series in groups.items():
        cps = change_points([r.median_ms for r in series], alpha=alpha) if len(series) >= 6 else []
        out[key] = (series, cps)
    return out


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..store import Store

    if args.limit <= 0:
        raise InputError(f"--limit must be positive, got {args.limit}")
    if not 0 < args.alpha < 1:
        raise InputError(f"--alpha must be in (0, 1), got {args.alpha}")
    path = _common.store_path(args)
    if not path.exists():
        raise InputError(f"no results store at {path} (run `deploykit profile` first, or pass "
                         "--store)")
    with Store(path) as store:
        if args.lineage:
            return _lineage(store, args.lineage, args.json)
        rows = _select(store, args.model, args.target)
    trends = _trends(rows, args.alpha, args.include_contaminated) if args.trend else {}
    skipped = 0 if args.include_contaminated else sum(r.state == "contaminated" for r in rows)
    if args.json:
        out = {"runs": [_row_dict(r) for r in rows[:args.limit]]}
        if args.trend:
            out["trends_skipped_contaminated"] = skipped
            out["trends"] = [{"model": k[0], "target": k[1], "runs": len(s),
                              "change_points": [dict(run_id=s[c.index].id,
                                                     created=s[c.index].created, index=c.index,
                                                     before_ms=c.before, after_ms=c.after,
                                                     ratio=c.ratio, p=c.p) for c in cps]}
                             for k, (s, cps) in trends.items()]
        from ..fsutil import dumps_json

        print(dumps_json(out), end="")
        return 0
    _print(rows[:args.limit], len(rows), trends, skipped if args.trend else 0)
    return 0


def _lineage(store, model: str, as_json: bool) -> int:
    """Print the model's chain of ancestors (export, compress steps, search candidates)."""
    from ..errors import InputError

    p = Path(model)
    if p.is_file():
        from ..fsutil import sha256_file

        sha = sha256_file(p)
    elif re.fullmatch(r"[0-9a-fA-F]{4,64}", model):
        sha = store.resolve_model(model)
    else:
        raise InputError(f"--lineage {model}: no such file and not a sha256 (prefix)")
    chain = store.lineage(sha) if sha else []
    if not chain:
        raise InputError(f"model {model} is not in the results store (export, compress, search "
                         "and profile record models; pass --store if it is elsewhere)")
    rows = [{"sha256": m.sha256, "path": str(m.path), "transform": m.transform,
             "parent_sha256": m.parent_sha256, "config": dict(m.config)} for m in chain]
    if as_json:
        from ..fsutil import dumps_json

        print(dumps_json({"lineage": rows}), end="")
        return 0
    for depth, r in enumerate(rows):
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items()
                        if v not in (None, "", {}, []) and not k.endswith("sha256"))
        how = r["transform"] or "(origin unknown: first seen by profile)"
        print(f"{'  ' * depth}{r['sha256'][:12]} {r['path']}")
        print(f"{'  ' * depth}  made by: {how}" + (f" ({cfg})" if cfg else ""))
    if rows[-1]["parent_sha256"]:
        print(f"(parent {rows[-1]['parent_sha256'][:12]} is not in this store)")
    return 0


def _row_dict(r) -> dict:
    return {"id": r.id, "created": r.created, "model_sha256": r.model_sha256,
            "model_path": r.model_path, "target": r.target, "artifact_id": r.artifact_id,
            "n": r.n, "median_ms": r.median_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms,
            "ci95_ms": list(r.ci95_ms), "stop_reason": r.stop_reason, "label": r.label,
            "labels": list(r.labels), "state": r.state}


def _print(rows, total: int, trends, skipped: int = 0) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # CI logs and pipes are not 80 columns wide: do not truncate
        console = Console(width=120)
    flagged = {s[c.index].id for s, cps in trends.values() for c in cps}
    t = Table(title=f"runs ({len(rows)} of {total}, newest first)")
    for c in ("id", "when", "model", "target", "median ms", "±CI", "p90", "n", "state", "label"):
        t.add_column(c, justify="right" if c in ("id", "median ms", "±CI", "p90", "n")
                     else "left", no_wrap=c != "label")
    for r in rows:
        lo, hi = r.ci95_ms
        half = (hi - lo) / 2 / r.median_ms if r.median_ms else float("nan")
        mark = " [bold red]◀[/]" if r.id in flagged else ""
        name = Path(r.model_path).name if r.model_path else ""
        t.add_row(str(r.id), time.strftime("%m-%d %H:%M", time.localtime(r.created)),
                  f"{r.model_sha256[:8]} {name}", r.target, f"{r.median_ms:.3f}{mark}",
                  f"{half:.1%}", f"{r.p90_ms:.3f}", str(r.n),
                  r.state if r.state == "clean" else f"[red]{r.state}[/red]", r.label or "")
    console.print(t)
    if skipped:
        console.print(f"--trend left out {skipped} run(s) measured under foreign load "
                      "(--include-contaminated to use them)")
    for (model, target), (series, cps) in trends.items():
        head = f"trend of {model} on {target} ({len(series)} runs)"
        if len(series) < 6:
            console.print(f"{head}: too few runs for change-point detection (need 6)")
        elif not cps:
            console.print(f"{head}: no change point")
        for c in cps:
            r = series[c.index]
            console.print(f"{head}: change at run {r.id} ({_when(r.created)}): "
                          f"{c.before:.3f} -> {c.after:.3f} ms ({c.ratio - 1:+.1%}), p={c.p:.3f}")
