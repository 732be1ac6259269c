"""Work done before a measured window opens: imports and set-up are not the measured work."""

import importlib
import logging

log = logging.getLogger(__name__)


def import_before_window(modules) -> None:
    """Import what a window's work will import: importing is not the measured work, and its time
    varies with the disk cache from run to run (joulebench.energy.process.imported_packages records any
    package a window still imports)."""
    for name in modules:
        importlib.import_module(name)


def prepare_before_window(stage, method: str) -> None:
    """Import what `method` of `stage` imports in its window (its WORK_MODULES), and run its
    set-up (its WORK_SETUP, such as tracing torchao's patterns): neither is the measured work."""
    import_before_window(stage.WORK_MODULES[method])
    setup = getattr(stage, "WORK_SETUP", {}).get(method)
    if setup is not None:
        setup()
