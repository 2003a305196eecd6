"""Statements written in SQL on Postgres, and the models built from their rows.

The ORM cannot return from an ``UPDATE``, and building the SQL of a query costs more CPU
than Postgres spends running a small one: the few statements every turn runs are written
here once, their columns named (a connection keeps them prepared, and a prepared statement
whose result columns change fails), their rows built into models as the ORM would. Other
databases (SQLite) take the same steps through the ORM.
"""

from typing import TypeVar

from django.db import connection
from django.db.models import Model

from core.sql import in_sql

from .models import ChatSession, Turn

__all__ = ["built", "columns", "in_sql", "joined", "many", "one", "turn_from_row"]

M = TypeVar("M", bound=Model)


def columns(alias: str, model: type[Model]) -> str:
    """Return ``alias."column", ...`` for every concrete field of ``model``, in order."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)


def one(sql: str, params: list[object]) -> tuple | None:
    """Run ``sql``; return its first row, or None."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def many(sql: str, params: list[object]) -> list[tuple]:
    """Run ``sql``; return all its rows."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def joined(row: tuple, model: type[M], related: type[Model], field: str) -> M:
    """Return ``model``'s object with its foreign key ``field`` (to ``related``) attached,
    from a row of ``columns`` of both, as ``select_related`` builds it.

    The values are taken as the driver returns them: a model built here has no field that
    Django converts on reading from Postgres (a test in ``tests/`` holds every such model to
    it).
    """
    split = len(model._meta.concrete_fields)
    obj = built(model, row[:split])
    model._meta.get_field(field).set_cached_value(obj, built(related, row[split:]))
    return obj


def built(model: type[M], row: tuple) -> M:
    """Return ``model``'s object from a row of ``columns`` of it, as a query builds it."""
    return model.from_db(connection.alias, None, row)


def turn_from_row(row: tuple | None) -> Turn | None:
    """Return the turn, its session attached, from a row of ``columns`` turn + session."""
    return None if row is None else joined(row, Turn, ChatSession, "session")
