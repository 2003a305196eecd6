"""The Celery application, wired the standard Django way."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isolation_site.settings")

app = Celery("isolation_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup closes the database connection before and after every task unless
# told to reuse it: a new Postgres backend per turn, which cost Postgres more CPU than all
# of the turn's queries. It may keep them; the handlers below look after them instead,
# and the fixup's own recycling every so many tasks is harmless.
app.conf.update(CELERY_DB_REUSE_MAX=1000)
app.autodiscover_tasks()


@signals.task_prerun.connect
def _connections_check(task, **kwargs) -> None:
    """Between tasks as between requests: drop connections past ``CONN_MAX_AGE`` or broken.

    Without ``CONN_HEALTH_CHECKS``' ``SELECT 1`` before the task's first query: every
    database step of a turn already runs again once on a fresh connection if its
    connection was lost (``once_more_on_fresh_connection``), so the check would only add
    a round trip to every task.
    """
    if task.request.is_eager:  # an eager task runs inside a request's transaction
        return
    from django.db import close_old_connections, connections

    close_old_connections()
    for connection in connections.all(initialized_only=True):
        connection.health_check_done = True


@signals.task_postrun.connect
def _connections_release(task, state: str | None = None, **kwargs) -> None:
    """Keep the connections of a task that succeeded; drop those of one that did not.

    A task cut short mid-query (a time limit, an outage) can leave a connection that looks
    usable and is not: Django cannot always tell, so it is not reused.
    """
    if task.request.is_eager:
        return
    from django.db import close_old_connections, connections

    if state == "SUCCESS":
        close_old_connections()
        return
    for connection in connections.all(initialized_only=True):
        connection.close()
