"""Benchmark settings: production settings plus the baseline endpoints and their task."""

from isolation_site.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
# So the Celery worker finds bench/tasks.py (autodiscovery looks in installed apps).
INSTALLED_APPS = [*INSTALLED_APPS, "bench"]  # noqa: F405
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
