"""orchestrator: one declarative job spec for data, training, search and serving on Ray."""

__version__ = "0.1.0"
