"""Hyperparameter search: plan.py (concurrency, space encoding, trial specs, trial records; pure) and
search.py (Ray Tune: the trial function, the tracker, the Tuner, resuming)."""
