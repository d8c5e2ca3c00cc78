"""Reports: a run's figures and ``report.md``, the comparison of several runs, and the shared plotting helpers.
Depends on ``rundir`` and ``stats``."""
