"""The site's routes: the API's tried first, as Django tries them on every request."""

from django.urls import get_resolver


def test_a_turns_routes_are_tried_first():
    # Each pattern tried costs every request (README: what code run once per request
    # costs); a tidy-up that sorts them back would lose that without a failing test.
    site = get_resolver().url_patterns
    assert str(site[0].pattern) == "api/v1/"
    names = [pattern.name for pattern in site[0].url_patterns[:3]]
    assert names == ["message-list", "turn-detail", "turn-events"]
