"""Backends: one module per runtime (ORT, TVM, OpenVINO)."""
