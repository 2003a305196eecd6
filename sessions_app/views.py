"""The browser pages: the chat UI (it talks to the REST API with the session cookie)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@login_required
@ensure_csrf_cookie
def chat(request: HttpRequest) -> HttpResponse:
    return render(request, "sessions_app/chat.html")
