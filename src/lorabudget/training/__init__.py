"""Training: the loop, its resumable state and checkpoint, distillation from a cached teacher, and experiment
trackers. Depends on ``model``, ``data`` and ``rundir``."""
