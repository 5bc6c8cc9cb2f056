"""The Celery layer: a run in the worker, queue-time publish, the prefork reaper, app state,
the worker hooks, and the seam to SingletonTask (``locked.LockedTask``)."""
