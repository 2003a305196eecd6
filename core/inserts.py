"""The ORM's INSERT of a model instance, its SQL built once per model on Postgres.

Every chat turn stores five rows (its turn, two messages, two audit entries). Through
``Model.save`` an audit entry's INSERT costs 0.16 ms of CPU here, most of it Django building
the same statement again; written out once it costs 0.06 (in-process, 2,000 in a row). The
statement is the one the ORM sends: every concrete column but
a key the database assigns, which comes back. Other databases (SQLite) save through the
ORM. Only the models the hot path writes use it; it sends no ``pre_save`` or ``post_save``
signal, so a model that has receivers for them must not.
"""

import functools
from typing import TypeVar

from django.db import connection, transaction
from django.db.models import AutoField, Field, Model

M = TypeVar("M", bound=Model)

# Fields whose value psycopg takes as the model holds it, with no preparing by the field
# (Django's preparing returns it unchanged on Postgres); any other kind of field is
# prepared by its own ``get_db_prep_save`` (a JSONField's dict, a BinaryField's bytes).
_AS_IS = frozenset(
    {
        "BigIntegerField",
        "BooleanField",
        "CharField",
        "DateTimeField",
        "ForeignKey",
        "IntegerField",
        "PositiveIntegerField",
        "TextField",
        "UUIDField",
    }
)


class _Statement:
    def __init__(self, model: type[Model]) -> None:
        meta = model._meta
        fields = [field for field in meta.concrete_fields if not isinstance(field, AutoField)]
        self.returns_key = len(fields) < len(meta.concrete_fields)
        names = ", ".join(connection.ops.quote_name(field.column) for field in fields)
        marks = ", ".join(["%s"] * len(fields))
        table = connection.ops.quote_name(meta.db_table)
        # Names from the model, values as parameters.
        self.sql = f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608
        if self.returns_key:
            self.sql += f" RETURNING {connection.ops.quote_name(meta.pk.column)}"
        # Fields that set their own value on saving (auto_now, auto_now_add): as the ORM does.
        self.pre_save = [field for field in fields if type(field).pre_save is not Field.pre_save]
        self.values = [
            (field.attname, None if field.get_internal_type() in _AS_IS else field)
            for field in fields
        ]

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
    set if the database assigns it). An error leaves the transaction it ran in marked for
    rollback, as the ORM's saving does; a unique or foreign-key violation is Django's
    ``IntegrityError``."""
    if connection.vendor != "postgresql":
        obj.save(force_insert=True)
        return obj
    statement = _statement(type(obj))
    with transaction.mark_for_rollback_on_error(), connection.cursor() as cursor:
        cursor.execute(statement.sql, statement.params(obj))
        if statement.returns_key:
            obj.pk = cursor.fetchone()[0]
    obj._state.adding, obj._state.db = False, connection.alias
    return obj
