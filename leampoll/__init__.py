"""leampoll: guards, pops, runs and reports LEAM Planning Portal jobs."""

__version__ = "3.0.0"
