"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PREAMBLE = ("Exception from", "Check '")  # OpenVINO's "where in the C++ source" lines


class DeployKitError(Exception):
    """Base class: the message is shown to the user as-is, on one line."""

    exit_code = 2


class InputError(DeployKitError):
    """A file, shape, option or factory given by the user is missing or wrong."""


class ExportError(DeployKitError):
    """torch -> ONNX export failed with every exporter."""


class VerificationError(DeployKitError):
    """Two models (or a model and its reference) disagree beyond tolerance."""


class TargetError(DeployKitError):
    """A target is unknown, unavailable here, or failed to compile/run a model."""


class StoreError(DeployKitError):
    """The results store cannot be opened or written."""


class DeviceError(DeployKitError):
    """A device (ssh://, adb://) cannot be reached, timed out, disconnected, or lacks the
    runtime the bundle needs."""


class StepVerificationError(VerificationError):
    """A recipe step's output disagrees with its parent; keeps both files (while the recipe's
    work folder lives) so that `compress --debug` can say which layers did it."""

    def __init__(self, message: str, parent=None, child=None):
        super().__init__(message)
        self.parent = parent
        self.child = child


def first_line(e: BaseException, limit: int = 400, *, backtrace: bool = True) -> str:
    """The one line of a library's exception worth showing a user: ANSI colours stripped; for a
    message carrying a backtrace (TVM's C++ and Python frames), the last line that names an error
    (`backtrace=False` for libraries whose first line is the message, like torch.export's);
    otherwise the first line that is not OpenVINO's source-location preamble; the exception's type
    name when the message is empty."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if backtrace and any(ln.startswith(("Traceback", "File ", "Stack trace")) for ln in lines):
        for ln in reversed(lines):
            if re.search(r"(Error|error|Check failed)", ln) and not ln.startswith("File "):
                return ln[:limit]
        return lines[-1][:limit]
    useful = [ln for ln in lines if not ln.startswith(_PREAMBLE)]
    return (useful or lines)[0][:limit]
