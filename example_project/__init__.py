"""An example Celery project using celery_redlock: see README.md beside this file.

``celery -A example_project worker`` finds the app in :mod:`example_project.celery`.
"""
