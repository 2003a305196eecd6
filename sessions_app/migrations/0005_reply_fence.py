"""A sequence for the redis history store's fences (``services.common.fence_next``): a value
each writer takes while holding the session's lock, which no rollback hands out again.
Postgres only: elsewhere (SQLite) a process keeps its lock for as long as it lives, and no
fence is needed."""

from django.db import migrations

SEQUENCE = "sessions_app_reply_fence"


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        # CACHE 1 (the default, said outright): a session caching values would hand them
        # out of the order in which writers lock, which is what the fence compares.
        schema_editor.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE} CACHE 1")


def drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0004_turn_withheld"),
    ]

    operations = [migrations.RunPython(create, drop)]
