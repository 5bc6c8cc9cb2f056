"""The Celery-free core: the Redlock quorum over N Redis masters (imports nothing from Celery)."""
