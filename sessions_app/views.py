"""The browser pages: the chat UI (it talks to the REST API with the session cookie)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie


@never_cache  # the page names its user and carries their CSRF token: no shared cache keeps it
@login_required
@ensure_csrf_cookie
def chat(request: HttpRequest) -> HttpResponse:
    """Render the chat page; everything in it is loaded from the API by ``chat.js``."""
    return render(request, "sessions_app/chat.html")
