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
