"""The browser pages without a browser: the Content Security Policy and what it rules out.

The page itself is exercised in Chromium by ``tests/e2e/test_browser.py``.
"""

import pytest
from django.test import Client

from ..support import csp_refusals

pytestmark = pytest.mark.django_db


def _directives(response) -> dict[str, str]:
    header = response.headers["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";") if part.strip())


@pytest.fixture
def signed_in(client: Client, user) -> Client:
    client.force_login(user)
    return client


def test_the_chat_page_has_a_strict_policy_and_no_inline_script_or_style(signed_in):
    page = signed_in.get("/")
    assert page.status_code == 200 and "no-store" in page.headers["Cache-Control"]
    policy = _directives(page)
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert csp_refusals(page) == []
    html = page.content.decode()
    assert "/static/sessions_app/chat.js" in html and "/static/sessions_app/chat.css" in html
    # Labelled controls and a live region for new replies.
    assert '<label for="message">Message</label>' in html and 'aria-live="polite"' in html


def test_the_login_page_has_the_policy_and_no_inline_script_or_style(client):
    page = client.get("/accounts/login/")
    assert (
        page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    )
    assert csp_refusals(page) == []


def test_the_chat_page_asks_a_stranger_to_log_in(client):
    page = client.get("/")
    assert page.status_code == 302 and page.headers["Location"].startswith("/accounts/login/")


def test_the_static_files_are_served(client):
    for name, kind in (("chat.js", "javascript"), ("chat.css", "css"), ("favicon.svg", "svg")):
        answer = client.get(f"/static/sessions_app/{name}")
        assert answer.status_code == 200 and kind in answer.headers["Content-Type"]
        b"".join(answer.streaming_content)  # close the file


def test_favicon_ico_leads_to_the_sites_icon(client):
    """Pages without the icon link (the admin's, a JSON answer opened in a tab) make the
    browser ask for /favicon.ico: no 404 in the logs, the site's icon in the tab."""
    asked = client.get("/favicon.ico", follow=True)
    assert asked.redirect_chain == [("/static/sessions_app/favicon.svg", 301)]
    assert asked.status_code == 200 and asked.headers["Content-Type"] == "image/svg+xml"
    b"".join(asked.streaming_content)  # close the file
