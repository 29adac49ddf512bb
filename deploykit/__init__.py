"""deploykit: take a compressed PyTorch model to a real device and tell the truth about its speed.

The Python API (deploykit/api.py): export, compress, profile, compare, search, check, package,
verify. They load on first use, so `import deploykit` stays instant.
"""

import types

__version__ = "0.1.0"

_API = ("export", "compress", "profile", "compare", "search", "check", "package", "verify",
        "model_ref")
__all__ = ["__version__", *_API]
# API names that are also sub-packages: the package itself is callable (see _CallableModule)
_PACKAGES = ("export", "compress", "search")


def __getattr__(name: str):
    if name in _PACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """`deploykit.export`, `.compress` and `.search` are sub-packages and API functions at once:
    the package stays an ordinary module for every import form, and calling it calls
    `deploykit.api.<name>` (`deploykit.export(module, example_inputs)`)."""

    def __call__(self, *args, **kwargs):
        from . import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)
