"""torch -> ONNX export, verified against torch (and ONNX files, simplified and checked)."""

import sys as _sys

from .._callable import CallableModule

_sys.modules[__name__].__class__ = CallableModule  # deploykit.export(...) is deploykit.api.export(...)
