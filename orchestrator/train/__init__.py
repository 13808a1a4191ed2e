"""Training: plan.py (worker plan and loop config; pure), loop.py (the per-worker loop; torch only),
driver.py (Ray Train: sessions, TorchTrainer, progress, test-split scoring), checkpoint.py (the
checkpoint files)."""
