"""The browser pages: the chat UI (it talks to the REST API with the session cookie)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie


@never_cache  # the page names its user and carries their CSRF token: no shared cache keeps it
@login_required
@ensure_csrf_cookie
def chat(request: HttpRequest) -> HttpResponse:
    """Render the chat page; everything in it is loaded from the API by ``chat.js``."""
    return render(request, "sessions_app/chat.html")


def favicon(request: HttpRequest) -> HttpResponse:
    """Send a browser that asks for ``/favicon.ico`` to the site's icon.

    The site's own pages name it (``base.html``); the admin's and a JSON answer opened in
    a tab do not, and a browser then asks for /favicon.ico: answered, not a 404 logged.
    """
    return HttpResponsePermanentRedirect(static("sessions_app/favicon.svg"))
