"""deploykit: take a compressed PyTorch model to a real device and tell the truth about its speed."""

__version__ = "0.1.0"
