"""torch -> ONNX export, verified against torch (and ONNX files, simplified and checked)."""

import sys as _sys

from .. import _CallableModule

_sys.modules[__name__].__class__ = _CallableModule  # deploykit.export(...) is deploykit.api.export(...)
