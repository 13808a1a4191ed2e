"""Training: plan.py (worker plan and loop config; pure), loop.py (the per-worker loop; torch only),
metrics.py (the metrics and test-split details that need a whole split's predictions; pure),
driver.py (Ray Train: sessions, TorchTrainer, progress, test-split scoring), checkpoint.py (the
checkpoint files)."""
