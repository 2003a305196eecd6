"""Settings gunicorn reads by itself from the directory it starts in.

API.md's command line (``gunicorn isolation_site.wsgi ... -k gthread --threads 8``) runs
from the repo root, so this file applies to it unchanged; flags on the command line win.
"""

import os

from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

# How long an idle kept-alive connection stays open. gunicorn's default, 2 s, is about as
# long as an API client waits between two requests (a poll after a 202, a Retry-After):
# the gthread worker then closes the connection just as the client's next request
# arrives, unread, and the kernel answers it with a reset that no log records. Idle
# connections cost no thread here (they wait in the worker's poller), only a socket, and
# past ``worker_connections`` less the threads they are closed after their response.
keepalive = 75


def post_fork(server, worker) -> None:
    """Tell the app how many threads each worker serves, before it loads.

    Under WSGI a ``?wait`` or an event stream holds a thread for as long as it lasts; the
    process's wait budget (``sessions_app.events.wait_budget_size``) is sized from this so
    that threads always stay free for short requests. ``WAITS_PER_PROCESS`` overrides it.

    Only for gunicorn's thread workers (``sync``, ``gthread``): under another worker class
    (``uvicorn_worker.UvicornWorker``: the ASGI app on an event loop) a wait holds no
    thread, and ``threads`` (1 there) would make a budget of none, every stream 503 and
    every ``?wait`` 202 at once on an idle server. Nor may a value inherited from the
    environment size it there.
    """
    if isinstance(worker, SyncWorker | ThreadWorker):
        os.environ["WEB_THREADS"] = str(server.cfg.threads)
    else:
        os.environ.pop("WEB_THREADS", None)


def on_starting(server) -> None:
    """Refuse several worker processes without ``REDIS_URL``, before any starts.

    Without Redis the failed-sign-in counts, the chat throttle and the wait slots are kept
    in each process's memory (the embedded setup's cache), so with N workers every limit
    lets N times as much through. One worker is the embedded setup, and works.
    """
    # Blanks only are unset, as the settings read them.
    if server.cfg.workers > 1 and not os.environ.get("REDIS_URL", "").strip():
        # gunicorn prints a RuntimeError from here as one line and exits 1.
        raise RuntimeError(
            f"{server.cfg.workers} worker processes need REDIS_URL: without it each keeps "
            "its own failed-sign-in counts, chat throttle and wait slots, so every limit "
            "counts once per process. Set REDIS_URL, or run one worker (-w 1)."
        )
