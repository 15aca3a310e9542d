"""Benchmarks of fanflow against plain Celery (run them from the repository root with ``python -m``)."""
