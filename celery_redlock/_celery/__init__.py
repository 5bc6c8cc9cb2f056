"""The Celery layer: a run in the worker, queue-time publish, the prefork reaper, app state
and the worker hooks."""
