"""The layer contracts of pyproject.toml's [tool.importlinter], checked with import-linter: a
module imports only from layers below its own (commands -> search/gate/bundle/report ->
rewrite/compress/backends -> measure -> core types), so there are no import cycles."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (it is in the dev extra: make test installs it)"
    return subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(REPO)})


def test_layer_contracts_are_kept():
    r = _lint_imports()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """Positive control: the same check on a copy of the package with one measuring module
    importing the search engine fails and names the offending import."""
    pkg = tmp_path / "deploykit"
    shutil.copytree(REPO / "deploykit", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    stats = pkg / "measure" / "env.py"
    stats.write_text(stats.read_text() + "\nfrom ..search import engine  # noqa\n")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    r = subprocess.run([exe, "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(tmp_path)})
    assert r.returncode != 0
    assert "deploykit.measure.env -> deploykit.search.engine" in r.stdout
