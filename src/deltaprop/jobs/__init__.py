"""The job runner: the SQLite queue, the worker, executors (local processes, Ray), sweeps.

Jobs run as `deltaprop resume RUN_DIR` child processes, so nothing here imports the training
modules or Numba."""
