"""The Content Security Policy header: django-csp's, its settings' policies built once."""

import functools
import http
from types import MappingProxyType

from csp import middleware
from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.utils import build_policy
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest
from django.http.response import HttpResponseBase

_SETTINGS = MappingProxyType(
    {False: "CONTENT_SECURITY_POLICY", True: "CONTENT_SECURITY_POLICY_REPORT_ONLY"}
)
_NONE = middleware.PolicyParts()  # no config, update, replace or nonce: the settings' own


class CSPMiddleware(middleware.CSPMiddleware):
    """django-csp's middleware, with the policies of the settings built once, not for
    every response.

    django-csp (4.0) builds both headers, the policy and the report-only one, from the
    settings on every response: 0.19-0.20 ms of CPU per request in the running server
    (``bench/turn_throughput.py --probe``), 0.08 in a loop, for two strings that change
    only with the settings. A response that brings parts of its own (the ``csp_*``
    decorators' policy, update or replace) or a request whose nonce was used goes through
    django-csp as before; a test holds every path to django-csp's headers. The policies
    are read once per process and again when a test changes the settings: a lazy value in
    them (a ``report-uri`` by ``reverse_lazy``) is taken as the first request found it.
    """

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if any(
            self.get_policy_parts(request=request, response=response, report_only=ro) != _NONE
            for ro in _SETTINGS
        ):  # parts of its own (a decorator's, a nonce used): django-csp builds them
            return super().process_response(request, response)
        if settings.DEBUG and response.status_code in (
            http.HTTPStatus.INTERNAL_SERVER_ERROR,
            http.HTTPStatus.NOT_FOUND,
        ):
            return response  # Django's debug pages, as django-csp leaves them
        for report_only, header in ((False, HEADER), (True, HEADER_REPORT_ONLY)):
            policy, excluded = _policy(report_only)
            exempt = getattr(response, "_csp_exempt_ro" if report_only else "_csp_exempt", False)
            if (
                policy
                and exempt is False
                and header not in response
                and not request.path_info.startswith(excluded)
            ):
                response[header] = policy
        if getattr(request, "_csp_nonce", None) is None:
            # Read after the header is written, a nonce could no longer reach it.
            request.csp_nonce = middleware.CheckableLazyObject(self._csp_nonce_post_response)
        return response


@functools.cache
def _policy(report_only: bool) -> tuple[str, tuple[str, ...]]:
    """The settings' policy (enforced or report-only) and the path prefixes it skips."""
    config = getattr(settings, _SETTINGS[report_only], None) or {}
    excluded = tuple(config.get("EXCLUDE_URL_PREFIXES", None) or ())
    return build_policy(report_only=report_only), excluded


@receiver(setting_changed)
def _policy_forget(*, setting: str, **kwargs: object) -> None:
    if setting in _SETTINGS.values():
        _policy.cache_clear()
