"""Modules imported on first use, so a rule job that never touches one does not pay its import.

`pandas` costs about 0.2 s of a job's start-up on a 2-core CPU host (it also loads
pyarrow), and most jobs (evaluate_model: one per model, variant and seed) never build a table.
"""

import importlib
import types


class LazyModule(types.ModuleType):
    """Stands in for the module of its name; the first attribute read imports the real one."""

    def __getattr__(self, name: str):
        return getattr(importlib.import_module(self.__name__), name)


pandas = LazyModule("pandas")
