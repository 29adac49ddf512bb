"""deploykit: take a compressed PyTorch model to a real device and tell the truth about its speed.

The Python API (deploykit/api.py): export, compress, profile, compare, search, check, package,
verify. They load on first use, so `import deploykit` stays instant.
"""

import sys
import types

__version__ = "0.1.0"

_API = ("export", "compress", "profile", "compare", "search", "check", "package", "verify",
        "model_ref")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`deploykit.export`, `.compress` and `.search` name both an API function and a sub-package.
    Importing a sub-package normally binds it as an attribute of its parent, which would hide the
    function after the first internal import; here the API name keeps the function, and the
    sub-package stays reachable the usual ways (`from deploykit.search import engine`,
    `import deploykit.search.engine as engine`, sys.modules)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
