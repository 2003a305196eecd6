import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isolation_site.settings")
# Under ASGI each request may run on another thread of a pool, so a persistent connection
# would be left open per thread; Django advises turning them off (CONN_MAX_AGE still wins).
os.environ.setdefault("CONN_MAX_AGE", "0")
django_application = get_asgi_application()

from core.bodylimit import AsgiBodyLimit  # noqa: E402  (needs the settings configured)

# MAX_REQUEST_BYTES before Django spools the body to disk (see core/bodylimit.py).
application = AsgiBodyLimit(django_application)
