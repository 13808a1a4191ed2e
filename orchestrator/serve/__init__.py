"""Serving a checkpoint: app.py (the FastAPI app, no Ray), deployment.py (the Ray Serve deployment and
`app_builder`), client.py (what to serve, and the predict client)."""
