"""A SIMULATED GPU + RAPL host, for tests only: see sitecustomize.py."""
