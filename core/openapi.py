"""The OpenAPI document as clients meet it: each operation's own words, 3.0-valid nullables.

Generated clients and strict validators read the document literally: a description inherited
from a mixin lands in every generated function, and ``nullable`` beside a ``$ref`` wrapped in
``allOf`` is ignored by OpenAPI 3.0 (``nullable`` only qualifies a ``type`` of the same schema).
"""

import inspect
from typing import Any

from drf_spectacular import openapi
from drf_spectacular.plumbing import get_doc

REF_PREFIX = "#/components/schemas/"


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, describing an operation only in its view's own words."""

    def get_description(self) -> str:
        """Return the handler's docstring, else the view class's own (never a base class's)."""
        handler = getattr(self.view, getattr(self.view, "action", self.method.lower()), None)
        own = self.view.__class__.__dict__.get("__doc__")
        return get_doc(handler) or (inspect.cleandoc(own) if own else "")


def nullable_unions(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """Give each nullable schema without a ``type`` a branch that admits null.

    A drf-spectacular postprocessing hook. ``nullable`` beside ``allOf: [$ref]`` (a nullable
    object) or beside a ``oneOf`` (a nullable field that may also be blank) becomes a
    ``oneOf`` with one more branch: the type of the others, ``nullable``, ``enum: [null]``,
    which admits null and nothing else.
    """
    schemas = result.get("components", {}).get("schemas", {})
    _rewrite(result, schemas)
    return result


def _rewrite(node: Any, schemas: dict) -> None:
    if isinstance(node, list):
        for item in node:
            _rewrite(item, schemas)
        return
    if not isinstance(node, dict):
        return
    branches = _union(node)
    if branches:
        del node["nullable"]
        kind = _type_of(branches[0], schemas)
        node["oneOf"] = [*branches, {"type": kind, "nullable": True, "enum": [None]}]
    for value in node.values():
        _rewrite(value, schemas)


def _union(node: dict) -> list | None:
    """Take the branches out of a nullable schema with no ``type``: its ``oneOf``, or an
    ``allOf`` that only wraps one schema. Leave any other schema as it is."""
    if node.get("nullable") is not True or "type" in node:
        return None
    if isinstance(node.get("oneOf"), list):
        return node.pop("oneOf")
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
        return node.pop("allOf")
    return None


def _type_of(schema: dict, schemas: dict) -> str:
    if "$ref" in schema:
        schema = schemas.get(schema["$ref"].removeprefix(REF_PREFIX), {})
    return schema.get("type", "object")
