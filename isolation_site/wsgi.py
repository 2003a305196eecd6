import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isolation_site.settings")
django_application = get_wsgi_application()

from core.bodylimit import WsgiBodyLimit  # noqa: E402  (needs the settings configured)
from sessions_app.events import wait_budget_warning  # noqa: E402

wait_budget_warning()

# MAX_REQUEST_BYTES at the server's door: a chunked body too (see core/bodylimit.py).
application = WsgiBodyLimit(django_application)
