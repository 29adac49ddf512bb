"""Bad and hostile bundles for `verify`: each prepare(out) builds a fresh bundle at out/bundle
(see tests/_bundles.py) and breaks it. Tampering is exit 1 (verification failed, nothing of the
bundle run); a folder that is no usable bundle at all is exit 2."""

from __future__ import annotations

from pathlib import Path

from _bundles import TAMPERING, edit_manifest, make_bundle


def _fresh(out: Path) -> Path:
    bundle, _, _ = make_bundle(out / "_build")
    target = out / "bundle"
    bundle.rename(target)
    return target


def _tampered(tamper):
    def prepare(out: Path) -> None:
        tamper(_fresh(out), out)
    return prepare


def _manifest(change):
    def prepare(out: Path) -> None:
        edit_manifest(_fresh(out), change)
    return prepare


def _raw_manifest(text: str):
    def prepare(out: Path) -> None:
        (_fresh(out) / "manifest.json").write_text(text)
    return prepare


def _no_manifest(out: Path) -> None:
    (_fresh(out) / "manifest.json").unlink()


def intact(out: Path) -> None:
    _fresh(out)


# (name, prepare, culprit in the error line, exit code, extra argv)
BUNDLE_CASES = [
    *[(f"tampered-{t.__name__.strip('_').replace('_', '-')}", _tampered(t), "integrity", 1, ())
      for t in TAMPERING],
    *[(f"tampered-{t.__name__.strip('_').replace('_', '-')}-python", _tampered(t), "integrity",
       1, ("--python",)) for t in TAMPERING[:4]],
    ("no-manifest", _no_manifest, "no manifest.json", 2, ()),
    ("manifest-not-json", _raw_manifest("{nope"), "corrupt manifest.json", 2, ()),
    ("manifest-list", _raw_manifest("[]"), "manifest", 2, ()),
    ("manifest-wrong-schema", _manifest(lambda m: m.update(schema="other/9")), "manifest", 2,
     ()),
    ("manifest-files-list", _manifest(lambda m: m.update(files=[])), "wrong type", 2, ()),
    ("manifest-runtime-string", _manifest(lambda m: m.update(runtime="tvm")), "wrong type", 2,
     ()),
    ("manifest-tolerance-nan", _manifest(
        lambda m: m["golden"].update(tolerance={"y": {"atol": float("nan"), "rtol": 0}})),
     "manifest", 2, ()),
    ("manifest-no-arch", _manifest(lambda m: m["runtime"].pop("arch")), "wrong type", 2, ()),
    ("manifest-unknown-backend", _manifest(lambda m: m["runtime"].update(backend="magic")),
     "magic", 2, ()),
    ("manifest-no-golden", _manifest(lambda m: m.pop("golden")), "golden", 2, ()),
    ("python-other-arch", _manifest(lambda m: m["runtime"].update(arch="riscv64")),
     "riscv64", 2, ("--python",)),
    ("json-unwritable-on-bundle", intact, "cannot write", 2, ("--json", "{ro}/v.json")),
    ("json-is-dir-on-bundle", intact, "is a directory", 2, ("--json", "{a_dir}")),
]
