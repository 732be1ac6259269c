"""The environment variables through which a run, its warm worker and its jobs talk."""

# The warm worker's socket, set for the run's jobs (joulebench.run.warm_worker).
SOCKET_VARIABLE = "JOULEBENCH_WARM_SOCKET"
# JOULEBENCH_WARM=0 switches the warm worker off.
SWITCH_VARIABLE = "JOULEBENCH_WARM"
# Set in a forked job, so that its script runs the work instead of asking the worker again.
CHILD_VARIABLE = "JOULEBENCH_WARM_CHILD"
