"""The Content Security Policy header: the site's middleware answers as django-csp's does,
the settings' policies built once."""

import itertools
import re
from html import unescape as html_unescape

import pytest
from csp import middleware as django_csp
from csp.decorators import csp, csp_exempt, csp_replace, csp_update
from csp.exceptions import CSPNonceError
from django.http import HttpResponse
from django.test import RequestFactory

from core import csp as site_csp

from .factories import UserFactory
from .support import csp_refusals

HEADERS = ("Content-Security-Policy", "Content-Security-Policy-Report-Only")
REPORT_ONLY = {
    "EXCLUDE_URL_PREFIXES": ["/api/docs/"],
    "DIRECTIVES": {"default-src": ["'self'"], "report-uri": "/csp-report/"},
}


def _plain(request):
    return HttpResponse("ok")


VIEWS = {
    "plain": _plain,
    "404": lambda request: HttpResponse(status=404),
    "500": lambda request: HttpResponse(status=500),
    "exempt": csp_exempt()(_plain),
    "exempt report-only": csp_exempt(REPORT_ONLY=True)(_plain),
    "update": csp_update({"img-src": ["data:"]})(_plain),
    "replace": csp_replace({"img-src": None})(_plain),
    "own policy": csp({"default-src": ["'self'"]})(_plain),
    "empty own policy": csp({})(_plain),
    "update report-only": csp_update({"img-src": ["data:"]}, REPORT_ONLY=True)(_plain),
    "header set": lambda request: HttpResponse(headers={HEADERS[0]: "default-src 'none'"}),
}
PATHS = ["/api/v1/sessions/", "/admin/chat/", "/api/docs/", "/"]


def _answer(middleware_class, view, path, nonce_used):
    middleware = middleware_class(view)
    request = RequestFactory().get(path)
    middleware.process_request(request)
    used = str(request.csp_nonce) if nonce_used else None
    response = middleware.process_response(request, view(request))
    headers = {h: response.headers.get(h) for h in HEADERS}
    if used:
        headers = {h: v and v.replace(used, "NONCE") for h, v in headers.items()}
    try:
        after = str(request.csp_nonce) == used
    except CSPNonceError:
        after = "refused"
    return headers, after


@pytest.fixture(params=["site", "report-only too", "debug"])
def policies(request, settings):
    if request.param == "report-only too":
        settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = REPORT_ONLY
    if request.param == "debug":
        settings.DEBUG = True
    return request.param


@pytest.mark.parametrize(
    ("view", "path", "nonce_used"), list(itertools.product(VIEWS, PATHS, [False, True]))
)
def test_it_answers_as_django_csp_does(policies, view, path, nonce_used):
    ours = _answer(site_csp.CSPMiddleware, VIEWS[view], path, nonce_used)
    assert ours == _answer(django_csp.CSPMiddleware, VIEWS[view], path, nonce_used)


def test_the_api_gets_the_sites_policy():
    headers, after = _answer(site_csp.CSPMiddleware, _plain, "/api/v1/sessions/", False)
    assert re.search(r"default-src 'none'", headers[HEADERS[0]])
    assert headers[HEADERS[1]] is None and after == "refused"


def test_a_changed_setting_is_followed(settings):
    _answer(site_csp.CSPMiddleware, _plain, "/", False)  # the site's policy, kept
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["'self'"]}}
    headers, _ = _answer(site_csp.CSPMiddleware, _plain, "/", False)
    assert headers[HEADERS[0]] == "default-src 'self'"


def test_the_site_uses_it(client):
    from django.conf import settings

    assert "core.csp.CSPMiddleware" in settings.MIDDLEWARE
    assert "csp.middleware.CSPMiddleware" not in settings.MIDDLEWARE
    answer = client.get("/api/v1/sessions/")
    assert "default-src 'none'" in answer["Content-Security-Policy"]


def test_a_plain_response_is_not_built_again(monkeypatch):
    _answer(site_csp.CSPMiddleware, _plain, "/", False)  # the site's policy, kept

    def built(*args, **kwargs):
        raise AssertionError("the policy was built again")

    monkeypatch.setattr(django_csp, "build_policy", built)
    monkeypatch.setattr(site_csp, "build_policy", built)
    headers, _ = _answer(site_csp.CSPMiddleware, _plain, "/api/v1/sessions/", False)
    assert "default-src 'none'" in headers[HEADERS[0]]


def test_drfs_browsable_page_is_left_out_and_the_json_keeps_the_policy():
    """With DEBUG, text/html gets DRF's browsable page, whose inline script and style and
    fonts the site's policy would block: it is left out, as the admin is."""
    from rest_framework.renderers import JSONRenderer
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from core.api import BrowsableAPIRenderer

    class Echo(APIView):
        renderer_classes = [JSONRenderer, BrowsableAPIRenderer]
        authentication_classes = permission_classes = []

        def get(self, request):
            return Response({"ok": True})

    view = Echo.as_view()
    served = site_csp.CSPMiddleware(lambda request: view(request).render())
    page = served(RequestFactory().get("/api/v1/echo/", HTTP_ACCEPT="text/html"))
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    assert "Content-Security-Policy" not in page
    answer = served(RequestFactory().get("/api/v1/echo/", HTTP_ACCEPT="application/json"))
    assert answer["Content-Type"] == "application/json"
    assert "default-src 'none'" in answer["Content-Security-Policy"]


SITE_POLICY = ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'")
ADMIN_PAGES = ["/admin/", "/admin/auth/user/", "/admin/auth/user/add/", "/admin/password_change/"]


def _under_the_sites_policy(response) -> None:
    policy = response["Content-Security-Policy"]
    assert all(directive in policy for directive in SITE_POLICY), policy
    assert csp_refusals(response) == []


@pytest.mark.django_db
def test_the_admin_is_under_the_sites_policy(client):
    """Same-origin files only, no inline script or style: the site's policy unchanged."""
    _under_the_sites_policy(client.get("/admin/login/"))
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    for path in (
        "/admin/",
        "/admin/auth/user/",
        "/admin/auth/user/add/",
        "/admin/password_change/",
    ):
        page = client.get(path)
        assert page.status_code == 200, path
        _under_the_sites_policy(page)
        assert page["Content-Security-Policy"] == client.get("/")["Content-Security-Policy"]


def test_the_api_docs_are_under_the_sites_policy_and_draw(client):
    """Swagger UI: its files from this site, its start-up script a file of its own, its one
    inline <style> allowed by its hash and its icons as data: images; nothing else."""
    page = client.get("/api/docs/")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    _under_the_sites_policy(page)
    policy = page["Content-Security-Policy"]
    assert re.search(r"style-src 'self' 'sha256-[A-Za-z0-9+/]+={0,2}'(;|$)", policy), policy
    assert re.search(r"img-src 'self' data:(;|$)", policy), policy
    html = page.content.decode()
    assert '<div id="swagger-ui"></div>' in html
    files = re.findall(r'<(?:script src|link rel="stylesheet" href)="([^"]+)"', html)
    assert len(files) == 4, files  # Swagger UI's stylesheet, its two scripts, the start-up
    for url in files:
        served = client.get(html_unescape(url))
        assert served.status_code == 200, url
        assert not served["Content-Type"].startswith("text/html"), url
        if served.streaming:
            b"".join(served.streaming_content)  # close the file
    script = client.get("/api/docs/?script=")
    assert script["Content-Type"].startswith("application/javascript")
    assert 'url: "/api/schema/"' in script.content.decode()
