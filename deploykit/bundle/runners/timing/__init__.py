"""A bundle that times itself: the on-device half of `deploykit profile --device ssh://...`.

Copied whole into every ORT and OpenVINO bundle as the package `dk_timing/` and run by `selftest.py
--time OUT.json` after the self-test passed, so it must stay standalone like selftest.py: Python
stdlib + numpy + onnxruntime (or openvino) on the device, no deploykit. (TVM bundles time
themselves with their C++ runner: dk_timing.h, the same rules in C++.) It follows deploykit's
methodology (measure/timing.py): session creation timed (init), the first inference timed alone,
warm-up until the running median settles, then timed blocks of ~0.5 s keeping every per-iteration
sample and the foreign CPU load of each block (/proc/stat), until the 95% CI of the median of the
block medians is within --rel-ci or --max-time is spent. Statistics are NOT computed here:
deploykit reads the raw samples back (bundle/device_timing.py) and derives them exactly as for a
local run. The output also carries the peak RSS (VmHWM) and the device's fingerprint. The load
monitor and warm-up rule are short copies of measure/timing.py's (this package cannot import
deploykit); tests/test_device_profile.py runs both on the same model. method.py: the methodology;
device.py: the fingerprint and peak RSS; run.py: sessions, rounds, the command line.

    python3 selftest.py BUNDLE --time OUT.json [--max-time S] [--threads N] [--rel-ci X]
    python3 selftest.py BUNDLE --time OUT.json --against OLD_BUNDLE [--max-time S] [--threads N]
        the gate's interleaved rounds (gate/rounds.py) on the device: OLD_BUNDLE is self-tested
        first; each round makes fresh sessions of both, warms them up and times them in
        alternating ~50 ms sub-blocks for --round-time s; one block per round and bundle;
        at least --min-rounds rounds and until --max-time. OUT holds one document per bundle.
"""

from .device import fingerprint as fingerprint, peak_rss_kb as peak_rss_kb
from .method import (LoadMonitor as LoadMonitor, _median as _median, median_ci as median_ci,
                     time_blocks as time_blocks, warm_up as warm_up)
from .run import (SCHEMA as SCHEMA, main as main, rounds as rounds,
                  session_options as session_options)
