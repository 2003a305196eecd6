import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isolation_site.settings")
# Under ASGI each request may run on another thread of a pool, so a persistent connection
# would be left open per thread; Django advises turning them off (CONN_MAX_AGE still wins).
os.environ.setdefault("CONN_MAX_AGE", "0")
application = get_asgi_application()
