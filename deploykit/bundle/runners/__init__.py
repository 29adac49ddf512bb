"""What a bundle runs on its device: `selftest.py` (stand-alone Python self-test, copied into
every bundle) and `tvm_runner.cc` (a small C++ program against the TVM runtime, cross-compiled
for the bundle's architecture, for devices without Python; its timing mode is `dk_timing.h`, the C++ twin of `timing.py`)."""

from pathlib import Path

RUNNER_SOURCE = Path(__file__).with_name("tvm_runner.cc")
RUNNER_HEADERS = (Path(__file__).with_name("dk_timing.h"),)  # beside the source in runner/
