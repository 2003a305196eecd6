"""The chat page's authentication: DRF's session cookie, for the user the page was drawn for.

A browser holds one session cookie for every tab. Once another account signs in on it (in
another tab, say), a chat page drawn for the first would read that account's chats with the
new cookie and draw them under the first one's name; only its writes fail (its CSRF token
is stale). The page names its user in ``X-Page-User`` on every call (its event stream,
which an ``EventSource`` opens with no header of its own, in ``?page_user=``), and a call
whose cookie is another user's is refused as unauthenticated (401) before anything is read.
API clients, which send no such header, are answered as before.
"""

from drf_spectacular.authentication import SessionScheme
from rest_framework import authentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

PAGE_USER_HEADER = "X-Page-User"
PAGE_USER_PARAM = "page_user"
OTHER_USER_CODE = "signed_in_as_another_user"


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's session authentication, refusing a cookie of another user than the page's."""

    def authenticate(self, request: Request) -> tuple | None:
        result = super().authenticate(request)
        expected = request.headers.get(PAGE_USER_HEADER)
        if expected is None:
            expected = request.query_params.get(PAGE_USER_PARAM)
        if result is not None and expected is not None and expected != str(result[0].pk):
            raise AuthenticationFailed(
                "This browser has signed in as another user since this page was opened: "
                "reload the page.",
                code=OTHER_USER_CODE,
            )
        return result


class PageSessionScheme(SessionScheme):
    """Declare it in the OpenAPI document as DRF's own: the session cookie (``cookieAuth``)."""

    target_class = SessionAuthentication
    priority = 0
