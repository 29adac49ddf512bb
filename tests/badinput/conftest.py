"""The bad-input corpus: a world of good and broken files built once, a case counter printed at
the end of the run (the README's Errors section states the count)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

_ran: Counter = Counter()


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, str]:
    import onnxruntime  # noqa: F401 - its import writes a session-id file (.ses) into $TMPDIR
    from _world import build

    root = tmp_path_factory.mktemp("badinput-world")
    paths = build(root / "w")
    nonbundle = root / "w" / "nonbundle"
    nonbundle.mkdir()
    (nonbundle / "keep.txt").write_text("precious")
    paths["nonbundle"] = str(nonbundle)
    # a folder nothing can be created in, for root too (root writes through permissions):
    # below /proc, where no process may create files
    paths["ro"] = "/proc/deploykit-badinput-ro"
    return paths


def pytest_runtest_logreport(report):
    if report.when == "call" and "badinput" in report.nodeid and "[" in report.nodeid:
        verb = report.nodeid.split("[", 1)[1].split("-", 1)[0]
        _ran[(verb, report.outcome)] += 1


def pytest_terminal_summary(terminalreporter):
    if not _ran:
        return
    verbs = sorted({v for v, _ in _ran})
    total = sum(_ran.values())
    passed = sum(n for (_, o), n in _ran.items() if o == "passed")
    per = ", ".join(f"{v} {sum(n for (vv, _), n in _ran.items() if vv == v)}" for v in verbs)
    terminalreporter.write_line(f"bad-input corpus: {total} cases run, {passed} passed ({per})")
