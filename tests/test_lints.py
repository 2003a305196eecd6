"""Lints that read the code (with ``ast``) for the ways conversation data could be shared or
fetched around the ownership gate, each shown to catch the defect it names."""

import ast
import textwrap
from collections.abc import Set
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("sessions_app", "audit_app", "core")


def _sources(*apps: str):
    for app in apps:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" not in path.parts:
                yield str(path.relative_to(ROOT)), path.read_text()


# -- 1. No mutable state shared by every request ------------------------------------------

# Declarations Django and DRF read from a class: configuration, never conversation data.
DECLARATIVE = {
    "fields", "read_only_fields", "extra_kwargs", "default_error_messages", "indexes",
    "constraints", "ordering", "list_display", "list_filter", "search_fields",
    "readonly_fields", "inlines", "authentication_classes", "permission_classes",
    "throttle_classes", "renderer_classes", "parser_classes", "permissions", "triggers",
    "actions", "list_select_related", "exclude",
}  # fmt: skip
MODULE_DECLARATIVE = {"urlpatterns", "__all__"}
# Module-level containers that are shared on purpose, each with why it holds no
# conversation data.
SHARED = {
    "_async_clients": "one AsyncAnthropic client per event loop: connection pools",
    "_listeners": "one turn-notification listener per event loop: a Redis connection and "
    "channel names (turn ids)",
}
MUTABLE_CALLS = {
    "list", "dict", "set", "defaultdict", "deque", "OrderedDict", "Counter",
    "WeakKeyDictionary", "WeakValueDictionary", "WeakSet", "fromkeys", "local",
    "SimpleNamespace",
}  # fmt: skip
CACHES = {"lru_cache", "cache", "cached_property"}
# Every cached function, with why its cache holds no conversation data. A new one must be
# added here, so that a cache keyed by content (one user's text handed to the next caller)
# cannot slip in.
CACHED = {
    "_store": "one store object per HISTORY_STORE name: configuration",
    "_client": "one Anthropic client per (API key, base URL): a connection pool",
    "_async_client": "one AsyncAnthropic per event loop and configuration",
    "_multi": "one MultiFernet per tuple of ENCRYPTION_KEYS",
    "_redis_index": "one index object per (URL, TTL, bucket bits)",
    "_redis_client": "one Redis client per URL for the fingerprint index: a connection pool",
    "_plan": "phone numbering-plan metadata per region code",
    "_unicode_forms": "Unicode's digits, spaces and dashes as ASCII, its invisible ones: for all",
    "_vocabulary": "wordfreq's fixed word lists of LEAK_SCAN_LANGUAGES: the same for every user",
    "_keyed": "one HMAC of the fingerprint key (configuration), copied per use",
    "_statement": "one INSERT statement per model: its SQL and its fields",
    "_policy": "the settings' Content Security Policy headers and excluded paths",
}


def _name(node: ast.AST) -> str:
    """The name a ``Name`` or an ``Attribute`` ends in (``HISTORY``, ``x.cache``); else ""."""
    return getattr(node, "id", None) or getattr(node, "attr", None) or ""


def _mutable(value: ast.expr | None) -> bool:
    literal = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    if isinstance(value, literal):
        return True
    if not isinstance(value, ast.Call):
        return False
    return _name(value.func) in MUTABLE_CALLS


def _assignments(body: list[ast.stmt]):
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    yield target.id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            yield stmt.target.id, stmt.value


def _cache_decorated(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if _name(target) in CACHES:
                    yield node.name
    # Applied as a call: ``_replies = functools.lru_cache(maxsize=None)(reply_for)``.
    for target, value in _assignments(tree.body):
        wrapper = value.func if isinstance(value, ast.Call) else None
        if isinstance(wrapper, ast.Call):  # lru_cache(maxsize=...)(fn)
            wrapper = wrapper.func
        if wrapper is not None and _name(wrapper) in CACHES:
            yield target


def _mutable_defaults(tree: ast.Module):
    """Functions with a mutable default argument, one object shared by every call."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
            if any(_mutable(default) for default in defaults):
                yield node.name


def shared_state_offenses(name: str, source: str) -> list[str]:
    """Return module- and class-level mutable values and unlisted caches in ``source``.

    UPPER_CASE is no excuse: a module-level ``HISTORY = {}`` is shared by every user.
    Constants are tuples, frozensets or read-only mappings.
    """
    tree = ast.parse(source)
    found = [
        f"{name}: {target}"
        for target, value in _assignments(tree.body)
        if _mutable(value) and target not in MODULE_DECLARATIVE | SHARED.keys()
    ]
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        found += [
            f"{name}: {cls.name}.{target}"
            for target, value in _assignments(cls.body)
            if _mutable(value) and target not in DECLARATIVE
        ]
    found += [f"{name}: @cache {fn}" for fn in _cache_decorated(tree) if fn not in CACHED]
    found += [f"{name}: {fn}(default)" for fn in _mutable_defaults(tree)]
    return found


def test_no_mutable_state_shared_by_every_request():
    offenders = [o for path, src in _sources(*APPS) for o in shared_state_offenses(path, src)]
    assert offenders == []


def test_the_shared_state_lint_catches_what_it_names():
    broken = """
        import functools
        HISTORY = {}
        _messages = []
        _by_user = collections.defaultdict(list)
        class Store:
            cache = dict()
        @functools.lru_cache
        def reply_for(content): ...
        _local = threading.local()
        _last = types.SimpleNamespace(reply=None)
        _seen = dict.fromkeys(())
        _replies = functools.lru_cache(maxsize=None)(reply_for)
        _answers = functools.cache(reply_for)
        def remember(text, seen=[]): ...
        def recall(text, *, by_user={}): ...
    """
    assert shared_state_offenses("broken.py", textwrap.dedent(broken)) == [
        "broken.py: HISTORY",
        "broken.py: _messages",
        "broken.py: _by_user",
        "broken.py: _local",
        "broken.py: _last",
        "broken.py: _seen",
        "broken.py: Store.cache",
        "broken.py: @cache reply_for",
        "broken.py: @cache _replies",
        "broken.py: @cache _answers",
        "broken.py: remember(default)",
        "broken.py: recall(default)",
    ]
    fine = "NAMES = ('a', 'b')\nurlpatterns = []\nclass M:\n    fields = ['x']\n"
    assert shared_state_offenses("fine.py", fine) == []


# A serializer instance at module level is shared by every request too. It is safe while
# each call hands it its object (``to_representation``): its ``instance``, ``data`` and the
# rest below keep one call's object for the next caller (``is_valid`` and ``save`` fill
# them). Each instance is listed with why it is safe, and no module touches that state.
SHARED_SERIALIZERS = {
    "_MESSAGE": "turns' messages, by to_representation only (TurnSerializer._message)",
    "_TURN": "every answer's turn, by to_representation only (turn_data)",
}
SERIALIZER_STATE = {"data", "instance", "initial_data", "validated_data", "is_valid", "save"}


def _serializer_instances(tree: ast.Module) -> list[str]:
    """The module-level names bound to a call of a ``...Serializer``."""
    return [
        target
        for target, value in _assignments(tree.body)
        if isinstance(value, ast.Call) and _name(value.func).endswith("Serializer")
    ]


def shared_serializer_offenses(
    name: str, source: str, elsewhere: Set[str] = frozenset()
) -> list[str]:
    """Return the unlisted module-level serializer instances of ``source``, and every use
    of the per-call state of one, its own or one of ``elsewhere`` (other modules')."""
    tree = ast.parse(source)
    own = _serializer_instances(tree)
    found = [f"{name}: {target} unlisted" for target in own if target not in SHARED_SERIALIZERS]
    shared = elsewhere | set(own)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in SERIALIZER_STATE:
            owner = _name(node.value)
            if owner in shared:
                found.append(f"{name}:{node.lineno} {owner}.{node.attr}")
    return found


def test_shared_serializer_instances_are_listed_and_keep_no_state():
    sources = list(_sources(*APPS))
    shared = {n for _, src in sources for n in _serializer_instances(ast.parse(src))}
    offenders = [o for path, src in sources for o in shared_serializer_offenses(path, src, shared)]
    assert offenders == []
    assert shared == SHARED_SERIALIZERS.keys()  # the search finds them, and none is stale


def test_the_shared_serializer_lint_catches_what_it_names():
    broken = """
        from . import serializers
        _TURN = TurnSerializer()
        _PAGE = serializers.SessionSerializer(many=True)
        def turn_data(turn):
            _TURN.instance = turn
            return _TURN.data
        def message_data(message):
            return serializers._MESSAGE.to_representation(message), _MESSAGE.is_valid()
    """
    found = shared_serializer_offenses("broken.py", textwrap.dedent(broken), {"_MESSAGE"})
    assert sorted(o.split(" ", 1)[1] for o in found) == [
        "_MESSAGE.is_valid",
        "_PAGE unlisted",
        "_TURN.data",
        "_TURN.instance",
    ]
    fine = """
        _TURN = TurnSerializer()
        def turn_data(turn):
            return _TURN.to_representation(turn), TurnSerializer(turn).data
    """
    assert shared_serializer_offenses("fine.py", textwrap.dedent(fine)) == []


# -- 2. Sessions, messages and turns fetched only through the gate ------------------------

MODELS = {"ChatSession", "Message", "Turn", "SessionVault"}
MANAGERS = {"objects", "_default_manager", "_base_manager"}
# The reverse accessor from a user to their sessions skips the gate's "live" filter and
# its audit. (The ones from a session start from a row the gate already handed out.)
RELATED = {"chat_sessions"}
TABLES = (
    "sessions_app_chatsession",
    "sessions_app_message",
    "sessions_app_turn",
    "sessions_app_sessionvault",
)
# Where fetching them is the module's job: the gate, the writes, the worker's reads by
# turn id, the glue of the vault, the stores.
GATE = {
    "sessions_app/selectors.py",
    "sessions_app/services/accept.py",
    "sessions_app/services/common.py",
    "sessions_app/services/reply.py",
    "sessions_app/services/sessions.py",
    "sessions_app/services/turns.py",
    "sessions_app/queries.py",
    "sessions_app/privacy.py",
}


# Managers reached from a model the lint cannot name (``type(obj).objects``), each with why
# that model is not a conversation model.
UNNAMED_MANAGERS = {
    "sessions_app/tokens.py: type(instance)._default_manager": "the user model's pre_save: "
    "instance is a user (the stored password hash)",
}


def ownership_offenses(name: str, source: str) -> list[str]:
    """Return every way ``source`` reaches conversation rows other than through the gate:
    model managers (by attribute or ``getattr``, under the model's name or an alias, or of
    a model the lint cannot name: ``type(obj)``, ``obj.__class__``, ``obj._meta.model``),
    reverse relations, ``apps.get_model`` and raw SQL on their tables (named, or taken
    from a model's ``_meta.db_table``)."""
    tree = ast.parse(source)
    models = MODELS | _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = _name(node.value)
            if node.attr in MANAGERS and owner in models:
                found.append(f"{name}:{node.lineno} {owner}.{node.attr}")
            elif node.attr in MANAGERS and _unnamed(node.value):
                if f"{name}: {ast.unparse(node)}" not in UNNAMED_MANAGERS:
                    found.append(f"{name}:{node.lineno} {ast.unparse(node)}")
            elif node.attr in RELATED and not isinstance(node.ctx, ast.Store):
                found.append(f"{name}:{node.lineno} .{node.attr}")
            elif node.attr == "db_table" and _model_meta(node.value, models):
                found.append(f"{name}:{node.lineno} raw SQL on a model's table")
        elif isinstance(node, ast.Call) and _name(node.func) == "getattr":
            owner, attr = (node.args + [None, None])[:2]
            named = _name(owner) in models or (owner is not None and _unnamed(owner))
            if named and getattr(attr, "value", None) in MANAGERS:
                found.append(f"{name}:{node.lineno} getattr manager")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get_model":
            names = {a.value for a in node.args if isinstance(a, ast.Constant)}
            if names & (MODELS | {"sessions_app"}):
                found.append(f"{name}:{node.lineno} get_model")
        elif isinstance(node, ast.Constant) and _names_a_table(node.value):
            found.append(f"{name}:{node.lineno} raw SQL")
    return found


def _model_meta(node: ast.expr, models: set[str]) -> bool:
    """Whether ``node`` is ``<one of models>._meta``, or the ``_meta`` of a model the lint
    cannot name."""
    if not (isinstance(node, ast.Attribute) and node.attr == "_meta"):
        return False
    return _name(node.value) in models or _unnamed(node.value)


def _unnamed(node: ast.expr) -> bool:
    """Whether ``node`` is a model the lint cannot tell by its name: anything but a plain
    name, a class taken from a module (``models.AuditEntry``) or ``get_user_model()``.
    A model computed from a row (``type(obj)``, ``obj.__class__``, ``obj._meta.model``)
    may be a conversation model."""
    if isinstance(node, ast.Name):
        return False
    if isinstance(node, ast.Attribute):
        return not node.attr[:1].isupper()
    return not (isinstance(node, ast.Call) and _name(node.func) == "get_user_model")


def _aliases(tree: ast.Module) -> set[str]:
    """The names ``source`` imports the conversation models under (``ChatSession as CS``)."""
    return {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name in MODELS and alias.asname
    }


def _names_a_table(value: object) -> bool:
    return isinstance(value, str) and any(table in value.lower() for table in TABLES)


def _outside_the_gate():
    for path, source in _sources(*APPS):
        if path not in GATE and "/stores/" not in path and not path.endswith("models.py"):
            yield path, source


def test_conversation_rows_are_fetched_only_through_the_gate():
    """Zulip's rule: one access function; any other fetch is a defect."""
    offenders = [o for path, src in _outside_the_gate() for o in ownership_offenses(path, src)]
    assert offenders == []
    for listed in UNNAMED_MANAGERS:  # each listed one is still there: none is stale
        path, expression = listed.split(": ", 1)
        assert expression in (ROOT / path).read_text(), listed


def test_the_ownership_lint_catches_every_way_around_the_gate():
    broken = """
        from django.apps import apps
        from django.db import connection
        def leak(user, sid):
            a = ChatSession.objects.get(pk=sid)
            b = Turn._default_manager.all()
            c = user.chat_sessions.first()
            e = apps.get_model("sessions_app", "Message")
            connection.cursor().execute("SELECT content FROM sessions_app_message")
            f = CS.objects.filter(owner=user)
            g = getattr(Message, "objects").all()
            connection.cursor().execute(f'SELECT * FROM "{Message._meta.db_table}"')
            connection.cursor().execute("SELECT entries FROM sessions_app_sessionvault")
        from sessions_app.models import ChatSession as CS
    """
    found = ownership_offenses("broken.py", textwrap.dedent(broken))
    assert sorted(o.split(" ", 1)[1] for o in found) == [
        ".chat_sessions",
        "CS.objects",
        "ChatSession.objects",
        "Turn._default_manager",
        "get_model",
        "getattr manager",
        "raw SQL",
        "raw SQL",
        "raw SQL on a model's table",
    ]


def test_the_ownership_lint_catches_managers_of_a_model_it_cannot_name():
    """A row's own class is a conversation model when the row is one: ``type(message)``
    reaches every user's messages."""
    broken = """
        def leak(message, turn, session):
            a = type(message).objects.all()
            b = turn.__class__._default_manager.filter(session_id=session.pk)
            c = session._meta.model._base_manager.all()
            d = getattr(type(turn), "objects").all()
            e = message._meta.model.objects.exclude(pk=message.pk)
            connection.cursor().execute(f"SELECT * FROM {type(message)._meta.db_table}")
    """
    found = ownership_offenses("broken.py", textwrap.dedent(broken))
    assert sorted(o.split(" ", 1)[1] for o in found) == [
        "getattr manager",
        "message._meta.model.objects",
        "raw SQL on a model's table",
        "session._meta.model._base_manager",
        "turn.__class__._default_manager",
        "type(message).objects",
    ]
    fine = """
        from audit_app import models
        from django.contrib.auth import get_user_model
        def fetch(pk, model):
            User = get_user_model()
            return (
                AuditEntry.objects.get(pk=pk),
                models.AuditEntry.objects.all(),
                get_user_model().objects.filter(pk=pk),
                User._default_manager.all(),
                model._meta.db_table,
            )
    """
    assert ownership_offenses("fine.py", textwrap.dedent(fine)) == []
