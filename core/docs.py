"""/api/docs/: Swagger UI under the site's Content Security Policy.

drf-spectacular's split view serves the page's start-up script as a file of its own
(``?script``), not inline; its assets come from the sidecar package, that is from this site.
What the page needs beyond the site's policy: its template's one inline ``<style>``, allowed
by its hash (read from the template the page is drawn from, so it follows an upgrade), and
the ``data:`` images Swagger UI's stylesheet draws its icons with.
"""

import base64
import hashlib
import re
from collections.abc import Callable

from csp.decorators import csp_update
from django.template.loader import get_template
from drf_spectacular.views import SpectacularSwaggerSplitView


def inline_style_hashes(template_name: str) -> list[str]:
    """Return the CSP hash source of each ``<style>`` written in the template ``template_name``."""
    source = get_template(template_name).template.source
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()}'"
        for style in re.findall(r"<style>(.*?)</style>", source, re.DOTALL)
    ]


def docs_view(**initkwargs: object) -> Callable:
    """Return the Swagger UI view (``initkwargs`` as ``as_view`` takes them) with its policy."""
    view = SpectacularSwaggerSplitView
    return csp_update({"style-src": inline_style_hashes(view.template_name), "img-src": ["data:"]})(
        view.as_view(**initkwargs)
    )
