import hashlib

from audit_app.services import content_hash


def test_content_hash_is_keyed_so_short_secrets_cannot_be_guessed_back(settings):
    card = "4111 1111 1111 1111"
    assert content_hash(card) == content_hash(card)
    assert content_hash(card) != hashlib.sha256(card.encode()).hexdigest()
    before = content_hash(card)
    settings.SECRET_KEY = "another-secret"
    assert content_hash(card) != before
