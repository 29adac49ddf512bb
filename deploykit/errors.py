"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


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


class StepVerificationError(VerificationError):
    """A recipe step's output disagrees with its parent; keeps both files (while the recipe's
    work folder lives) so that `compress --debug` can say which layers did it."""

    def __init__(self, message: str, parent=None, child=None):
        super().__init__(message)
        self.parent = parent
        self.child = child
