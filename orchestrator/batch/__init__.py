"""Offline batch prediction and evaluation over files (`orchestrator predict RUN FILE -o OUT`, `orchestrator evaluate`)."""
