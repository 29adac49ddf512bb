"""deploykit: take a compressed PyTorch model to a real device and tell the truth about its speed.

The Python API (deploykit/api.py): export, compress, profile, compare, search, check, package,
verify. They load on first use, so `import deploykit` stays instant.
"""

from ._version import __version__

_API = ("export", "compress", "profile", "compare", "search", "check", "package", "verify",
        "model_ref")
__all__ = ["__version__", *_API]
# API names that are also sub-packages: the package itself is callable (_callable.CallableModule)
_PACKAGES = ("export", "compress", "search")


def __getattr__(name: str):
    if name in _PACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
