"""Site plumbing shared by the apps (no models): API pagination, JSON-only errors, the
error table, middleware, outage helpers, ``/healthz`` and the ASGI stream adapter."""
