"""The API's content negotiation: DRF's answers but never 406, the common ones taken at
once."""

import itertools

import pytest
from django.http import Http404
from rest_framework.exceptions import NotAcceptable, NotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer, TemplateHTMLRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from core.api import JsonFirstNegotiation

ACCEPTS = [
    None,
    "*/*",
    "application/json",
    "",
    "application/json; indent=4",
    "application/json;q=0.5, text/html",
    "text/html",
    "text/html, application/json;q=0.9",
    "application/*",
    "*/*;q=0.8",
    "application/xml",
    "APPLICATION/JSON",
]
FORMATS = [None, "json", "api", "xml"]
RENDERERS = [
    [JSONRenderer],
    [JSONRenderer, BrowsableAPIRenderer],
    [BrowsableAPIRenderer, JSONRenderer],
    [TemplateHTMLRenderer, JSONRenderer],
]


def _answer(negotiation, accept, fmt, renderers, suffix):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    query = {} if fmt is None else {"format": fmt}
    request = Request(APIRequestFactory().get("/", query, **headers))
    try:
        renderer, media_type = negotiation.select_renderer(
            request, [cls() for cls in renderers], suffix
        )
    except (NotAcceptable, NotFound, Http404) as exc:
        return type(exc).__name__
    return type(renderer).__name__, media_type


@pytest.mark.parametrize(
    ("accept", "fmt", "renderers", "suffix"),
    list(itertools.product(ACCEPTS, FORMATS, RENDERERS, [None, "json"])),
)
def test_it_answers_as_drf_does_but_never_406(accept, fmt, renderers, suffix):
    ours = _answer(JsonFirstNegotiation(), accept, fmt, renderers, suffix)
    drf = _answer(DefaultContentNegotiation(), accept, fmt, renderers, suffix)
    if drf == "NotAcceptable":  # the first renderer instead
        drf = (renderers[0].__name__, renderers[0].media_type)
    assert ours == drf


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_what_clients_send_is_answered_without_parsing_accept(monkeypatch, accept):
    def parsed(*args, **kwargs):
        raise AssertionError("DRF's negotiation ran")

    monkeypatch.setattr(DefaultContentNegotiation, "get_accept_list", parsed)
    assert _answer(JsonFirstNegotiation(), accept, None, [JSONRenderer], None) == (
        "JSONRenderer",
        "application/json",
    )


def test_the_api_negotiates_with_it(client, settings):
    assert settings.REST_FRAMEWORK["DEFAULT_CONTENT_NEGOTIATION_CLASS"] == (
        "core.api.JsonFirstNegotiation"
    )
    # text/html: DRF would answer 406, a status the schema does not list.
    for accept in ("*/*", "application/json", "text/html", "application/xml"):
        answer = client.get("/api/v1/sessions/", HTTP_ACCEPT=accept)
        assert (answer.status_code, answer["Content-Type"]) == (401, "application/json")
