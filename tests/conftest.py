"""Shared fixtures: the bundled demo model exported once per session, and a tiny MLP as ONNX."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onnx_models import make_mlp

REPO = Path(__file__).resolve().parent.parent
TINYRESNET = REPO / "deploykit" / "examples" / "tinyresnet.py"


@pytest.fixture(scope="session")
def tinyresnet_export(tmp_path_factory):
    """ExportResult of deploykit/examples/tinyresnet.py:build with a dynamic batch dim."""
    from deploykit.export.exporter import export_model

    out = tmp_path_factory.mktemp("tinyresnet") / "tinyresnet.onnx"
    return export_model(f"{TINYRESNET}:build", out, dynamic_batch=True)


@pytest.fixture(scope="session")
def tinyresnet_onnx(tinyresnet_export) -> Path:
    """Path of the exported tinyresnet (input x[batch,3,176,176] -> output[batch,100])."""
    return Path(tinyresnet_export.model.path)


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory) -> Path:
    """A tiny MLP ONNX file (x[batch,16] -> y[batch,4]) built without any exporter."""
    return make_mlp(tmp_path_factory.mktemp("mlp") / "mlp.onnx")


# Hardware markers (pyproject.toml): the only tests that may skip, in CI too, because the machine
# lacks the hardware they need; their skips are labelled and counted at the end of the run.
HARDWARE = ("gpu", "bf16")


def _hardware(item) -> str | None:
    return next((m for m in HARDWARE if item.get_closest_marker(m) is not None), None)


@pytest.fixture(scope="session")
def pg_cluster():
    """A real PostgreSQL server for this test session (throwaway cluster on a loopback port)."""
    from _tools import load_tool

    cluster = load_tool("pg_cluster").PgCluster()
    yield cluster
    cluster.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path) -> str:
    """A fresh, empty results store on each back end: a SQLite file, or a new PostgreSQL
    database on the session's server."""
    if request.param == "sqlite":
        return str(tmp_path / "r.sqlite")
    return request.getfixturevalue("pg_cluster").create_db()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped test is a hole, not a pass: fail it, unless it is marked with a
    hardware marker, whose skip is labelled `[hardware: gpu]` (or bf16) instead."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or call.when not in ("setup", "call"):
        return
    hw = _hardware(item)
    if hw is not None:
        if isinstance(report.longrepr, tuple):  # (file, line, reason) of a plain skip
            path, line, reason = report.longrepr
            report.longrepr = (path, line, f"[hardware: {hw}] {reason}")
        report.user_properties.append(("hardware_skip", hw))
    elif os.environ.get("CI") == "true":
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (a missing dependency is a hole): {report.longrepr}"


def pytest_terminal_summary(terminalreporter):
    """One line saying which hardware-marked tests this machine could not run."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if any(k == "hardware_skip" for k, _ in getattr(r, "user_properties", ()))]
    if skipped:
        kinds = sorted({v for r in skipped for k, v in r.user_properties if k == "hardware_skip"})
        terminalreporter.write_line(
            f"hardware-dependent tests skipped on this machine ({', '.join(kinds)}): "
            + ", ".join(r.nodeid for r in skipped))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Module-level importorskip in CI likewise fails instead of skipping a whole file."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (a missing dependency is a hole): {report.longrepr}"
