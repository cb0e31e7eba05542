"""The Ray Serve app (see serve/app.py)."""
