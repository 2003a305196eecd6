import logging
import multiprocessing
import os
import sys

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isolation_site.settings")
# Under ASGI each request may run on another thread of a pool, so a persistent connection
# would be left open per thread; Django advises turning them off (CONN_MAX_AGE still wins;
# set but empty it counts as unset, as everywhere, so is not kept as settings' 60).
if not os.environ.get("CONN_MAX_AGE", "").strip():
    os.environ["CONN_MAX_AGE"] = "0"


def uvicorn_workers() -> int:
    """Return how many worker processes the uvicorn supervisor that started this process
    runs (``--workers``, or ``WEB_CONCURRENCY``); 1 when none did, or under ``--reload``.

    uvicorn spawns each worker with its Config as the process's ``config`` argument (kept
    by multiprocessing on the process object); the app is imported in the workers only.
    """
    if multiprocessing.parent_process() is None:
        return 1  # uvicorn with one worker runs in its own process, as do other servers
    config = getattr(multiprocessing.current_process(), "_kwargs", {}).get("config")
    if type(config).__module__ != "uvicorn.config" or config.should_reload:
        return 1
    return config.workers


def _refuse(message: str) -> None:
    # Exit code 3 is uvicorn's startup failure, which stops its supervisor; any other
    # exit of a worker (an exception's 1) only makes it spawn the worker again, forever.
    logging.getLogger("uvicorn.error").error(message)
    sys.exit(3)


try:
    django_application = get_asgi_application()
except ImproperlyConfigured as exc:  # a setting that refuses to start
    if uvicorn_workers() == 1:
        raise
    _refuse(f"The settings refuse to start: {exc}")

from core.bodylimit import AsgiBodyLimit  # noqa: E402  (needs the settings configured)

# Without Redis the failed-sign-in counts, the chat throttle and the wait slots are kept in
# each process's memory: refused with several workers, as gunicorn.conf.py does.
if not settings.REDIS_URL and (workers := uvicorn_workers()) > 1:
    _refuse(
        f"{workers} worker processes need REDIS_URL: without it each keeps its own "
        "failed-sign-in counts, chat throttle and wait slots, so every limit counts once per "
        "process. Set REDIS_URL, or run one worker (--workers 1)."
    )

# MAX_REQUEST_BYTES before Django spools the body to disk (see core/bodylimit.py).
application = AsgiBodyLimit(django_application)
