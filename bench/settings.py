"""Benchmark settings: production settings plus the bare baseline endpoint's URLconf."""

from isolation_site.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
