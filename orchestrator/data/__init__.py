"""Data: ingest.py (Ray Data: read, check, split, fit, transform), preprocess.py (the fitted
transforms; pure: numpy and pandas only), bundled.py (the scikit-learn datasets behind `bundled:` sources)."""
