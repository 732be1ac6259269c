"""Zeus's ZeusMonitor, imported without pulling scikit-learn into every job."""

import sys


def _import_zeus_monitor():
    """zeus.monitor.ZeusMonitor, without importing scikit-learn into every job.

    zeus.monitor.power imports `sklearn.metrics.auc` at module level, which pulls in scipy.stats:
    0.75 s of each job's 3 s of imports on a 2-core CPU host. Zeus calls `auc` only to
    integrate sampled power (GPUs without an energy counter), so it gets a stand-in that imports
    the real `auc` on its first call; the stand-in leaves sys.modules as soon as Zeus is imported.
    """
    import types

    if "zeus.monitor.power" in sys.modules or "sklearn.metrics" in sys.modules:
        from zeus.monitor import ZeusMonitor

        return ZeusMonitor

    def auc(x, y):
        from sklearn.metrics import auc as sklearn_auc

        return sklearn_auc(x, y)

    stand_in = types.ModuleType("sklearn.metrics")
    stand_in.auc = auc
    sys.modules["sklearn.metrics"] = stand_in
    try:
        from zeus.monitor import ZeusMonitor
    finally:
        if sys.modules.get("sklearn.metrics") is stand_in:
            del sys.modules["sklearn.metrics"]
    return ZeusMonitor


ZeusMonitor = _import_zeus_monitor()
