"""What a bundle runs on its device: `selftest.py` (stand-alone Python self-test, copied into
every bundle), `timing/` (the timing mode of ORT and OpenVINO bundles, copied whole into each as
`dk_timing/`) and `tvm_runner.cc` (a small C++ program against the TVM runtime, cross-compiled
for the bundle's architecture, for devices without Python; its timing mode is `dk_timing.h`, the
C++ twin of `timing/`)."""

from pathlib import Path

RUNNER_SOURCE = Path(__file__).with_name("tvm_runner.cc")
RUNNER_HEADERS = (Path(__file__).with_name("dk_timing.h"),)  # beside the source in runner/
TIMING_PACKAGE = Path(__file__).with_name("timing")  # copied whole into ORT/OpenVINO bundles
TIMING_DIR = "dk_timing"  # its name in a bundle (`import dk_timing` in selftest.py)
