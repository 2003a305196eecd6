"""Encryption at rest with ``ENCRYPTION_KEYS``: MultiFernet (the first key encrypts, every
key decrypts, so keys rotate), and per-session data keys wrapped by it.

A session's vault is encrypted with a data key of its own, and only the wrapped data key
is kept, on the session's vault row: erasing the session destroys the key, so a copy of
the vault's ciphertext anywhere else (a replica, a cache, an export) is unreadable.
"""

import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

__all__ = ("InvalidToken", "data_key_new", "open_with", "seal", "seal_with", "unseal")


@functools.lru_cache(maxsize=4)
def _multi(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def _site() -> MultiFernet:
    return _multi(tuple(settings.ENCRYPTION_KEYS))


def seal(data: bytes) -> bytes:
    """Encrypt and authenticate ``data`` under the first of ``ENCRYPTION_KEYS``."""
    return _site().encrypt(data)


def unseal(token: bytes, *, ttl: int | None = None) -> bytes:
    """Decrypt ``token`` under any of ``ENCRYPTION_KEYS``; raise ``InvalidToken`` if it was
    altered, is not ours, or is older than ``ttl`` seconds."""
    return _site().decrypt(token, ttl=ttl)


def data_key_new() -> tuple[bytes, bytes]:
    """Return a new data key and its wrapped form (the only form that is stored)."""
    key = Fernet.generate_key()
    return key, seal(key)


def seal_with(wrapped_key: bytes, data: bytes) -> bytes:
    """Encrypt ``data`` with the data key that ``wrapped_key`` wraps."""
    return Fernet(unseal(wrapped_key)).encrypt(data)


def open_with(wrapped_key: bytes, token: bytes) -> bytes:
    """Decrypt ``token`` with the data key that ``wrapped_key`` wraps."""
    return Fernet(unseal(wrapped_key)).decrypt(token)
