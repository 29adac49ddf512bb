"""Put this folder on a CLI subprocess's PYTHONPATH to script a quiet machine through the
load-monitor seam (deploykit.measure.timing.make_load_monitor): for tests of logic that depends on
measurements being clean (a resumed search reuses only clean ones), which the shared machine's
real load must not decide. The real monitor is tested in tests/test_measure.py."""

import deploykit.measure.timing as _measure


class _Quiet:
    def start(self):
        pass

    def stop(self):
        return 0.0


_measure.make_load_monitor = _Quiet
