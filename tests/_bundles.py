"""Test helper: re-seal a changed bundle (file hashes and manifest digest recomputed), as someone
who read selftest.py could, so that a test reaches the golden-output comparison behind the
integrity check."""

from __future__ import annotations

import json
from pathlib import Path

from deploykit.runners import selftest as st


def reseal(bundle: Path) -> None:
    m = json.loads((bundle / st.MANIFEST).read_text())
    m["files"] = {rel: st.sha256_file(bundle / rel) for rel in m["files"]}
    m["manifest_sha256"] = st.manifest_digest(m)
    (bundle / st.MANIFEST).write_text(json.dumps(m))
