"""Statements built once, on Postgres: whether this connection runs them, and the ORM's
INSERT of a model instance; and which constraint a statement's ``IntegrityError`` violated.

Every chat turn stores five rows (its turn, two messages, two audit entries). Through
``Model.save`` an audit entry's INSERT costs 0.16 ms of CPU here, most of it Django building
the same statement again; built once per model it costs 0.06 (in-process, 2,000 in a row).
``insert`` sends the statement the ORM sends (every concrete column but a key the database
assigns, which comes back); other databases (SQLite) save through the ORM.

It is ``save(force_insert=True)`` for the plain fields the hot path's models have, and no
more: no ``pre_save``/``post_save`` signal, not the model's own ``save()`` (the models given
to it have none that acts on a new row), no expressions (``F()``, ``Now()``) as values, no
``ValidationError`` for a malformed value before the statement (Postgres's ``DataError``
instead), the default database only. A field kind it does not know is prepared as the ORM
prepares it; a generated or ``db_default`` field, or a key the database assigns given in
advance, is refused.
"""

import functools
import re
import sqlite3
from typing import TypeVar

from django.apps import apps
from django.db import IntegrityError, connection, models, transaction
from django.db.models import AutoField, Field, Model, UniqueConstraint

M = TypeVar("M", bound=Model)


def in_sql() -> bool:
    """Tell whether this connection runs the statements written out here (Postgres)."""
    return connection.vendor == "postgresql"


# Field classes (exactly these, not subclasses, which may prepare values their own way)
# whose value psycopg takes as the model holds it: Django's preparing gives it back
# unchanged on Postgres. Any other field is prepared by its own ``get_db_prep_save`` (a
# JSONField's dict, a BinaryField's bytes); a foreign key is judged by the field it points to.
_AS_IS = frozenset(
    {
        models.BigIntegerField,
        models.BooleanField,
        models.CharField,
        models.DateTimeField,
        models.IntegerField,
        models.PositiveIntegerField,
        models.TextField,
        models.UUIDField,
        models.AutoField,
        models.BigAutoField,
    }
)


def _as_is(field: Field) -> bool:
    if isinstance(field, models.ForeignKey):
        return _as_is(field.target_field)
    return type(field) in _AS_IS


class _Statement:
    def __init__(self, model: type[Model]) -> None:
        meta, quote = model._meta, connection.ops.quote_name
        refused = [f.name for f in meta.concrete_fields if f.generated or f.has_db_default()]
        if refused:
            raise NotImplementedError(f"{model.__name__}: generated or db_default {refused}")
        fields = [field for field in meta.concrete_fields if not isinstance(field, AutoField)]
        self.returns_key = len(fields) < len(meta.concrete_fields)
        table = quote(meta.db_table)
        names = ", ".join(quote(field.column) for field in fields)
        marks = ", ".join(["%s"] * len(fields))
        # Names from the model, values as parameters.
        self.sql = f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608
        if self.returns_key:
            self.sql += f" RETURNING {table}.{quote(meta.pk.column)}"
        # Fields that set their own value on saving (auto_now, auto_now_add): as the ORM does.
        self.pre_save = [field for field in fields if type(field).pre_save is not Field.pre_save]
        self.values = [(field.attname, None if _as_is(field) else field) for field in fields]

    def params(self, obj: Model) -> list[object]:
        for field in self.pre_save:
            field.pre_save(obj, True)
        return [
            getattr(obj, name)
            if prep is None
            else prep.get_db_prep_save(getattr(obj, name), connection)
            for name, prep in self.values
        ]


@functools.cache
def _statement(model: type[Model]) -> _Statement:
    return _Statement(model)


def insert(obj: M) -> M:
    """INSERT ``obj`` as ``obj.save(force_insert=True)`` does, and return it saved (its key
    set if the database assigns it).

    An error leaves the transaction it ran in marked for rollback, as the ORM's saving does;
    a unique violation is Django's ``IntegrityError`` at once (a foreign key's, Django's
    constraints being deferred, at the commit). Raise ``ValueError`` for an instance whose
    database-assigned key is already set: the ORM would insert that key, this would not.
    """
    if not in_sql():
        obj.save(force_insert=True)
        return obj
    statement = _statement(type(obj))
    if statement.returns_key and obj.pk is not None:
        raise ValueError(f"{type(obj).__name__} {obj.pk}: its key is the database's to assign")
    with transaction.mark_for_rollback_on_error(), connection.cursor() as cursor:
        cursor.execute(statement.sql, statement.params(obj))
        if statement.returns_key:
            obj.pk = cursor.fetchone()[0]
    obj._state.adding, obj._state.db = False, connection.alias
    return obj


# SQLite names a unique index by its columns ("UNIQUE constraint failed: t.a, t.b"), a
# partial one too, or by its name when it is on expressions ("... failed: index 'name'").
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (?:index '(?P<index>[^']+)'|(?P<on>.+))")


def violated_constraint(exc: IntegrityError) -> str | None:
    """Return the name of the constraint whose violation ``exc`` is; None if the database
    does not tell.

    Django chains the driver's error as ``__cause__``: on Postgres it names the constraint
    (``diag.constraint_name``; None for a NOT NULL). SQLite names only a unique index's
    columns: they name the model's ``UniqueConstraint`` over exactly those columns of that
    table. Its other violations (NOT NULL, CHECK, FOREIGN KEY), a ``unique`` field's and
    any other database's errors give None: a caller that maps one constraint's violation
    to an answer of its own lets every other one propagate.
    """
    cause = exc.__cause__
    if (diag := getattr(cause, "diag", None)) is not None:
        return diag.constraint_name
    if isinstance(cause, sqlite3.IntegrityError) and (
        found := _SQLITE_UNIQUE.fullmatch(str(cause))
    ):
        return found["index"] or _unique_over(found["on"].split(", "))
    return None


def _unique_over(qualified: list[str]) -> str | None:
    """The name of the ``UniqueConstraint`` over exactly these ``table.column`` names."""
    tables = {name.partition(".")[0] for name in qualified}
    columns = [name.partition(".")[2] for name in qualified]
    for model in apps.get_models():
        if {model._meta.db_table} != tables:
            continue
        for constraint in model._meta.constraints:
            if isinstance(constraint, UniqueConstraint) and columns == [
                model._meta.get_field(name).column for name in constraint.fields
            ]:
                return constraint.name
    return None
