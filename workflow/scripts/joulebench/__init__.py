"""joulebench: measure what Green-AI techniques buy, in accuracy and joules."""

from joulebench.version import version as _version

__version__ = _version()
