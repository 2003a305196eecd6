"""The offline responder (``LLM_PROVIDER=offline``): a deterministic reply from the
session's own history, with nothing sent out of the process.

Apart from ``claude`` because it needs neither the SDK nor the network.
"""

import re
from collections.abc import Sequence

from ..isolation import Message

# Only "my name is" ignores case: the name itself is one or two capitalised words, or
# the placeholder that stands for it once pseudonymised.
_NAME = re.compile(r"\b(?i:my name is) (<PERSON_\d+>|[A-Z][\w'-]*(?: [A-Z][\w'-]*)?)")


def offline_reply(history: Sequence[Message]) -> str:
    """Answer deterministically from ``history`` alone, the session it is given.

    It remembers a name the user gave in this session, which makes isolation visible in
    the demo: another user asking "what is my name?" gets nothing of it.
    """
    user_texts = [m.content for m in history if m.role == "user"]
    last = user_texts[-1] if user_texts else ""
    names = [match.group(1) for text in user_texts for match in _NAME.finditer(text)]
    if "what is my name" in last.lower():
        if names:
            return f"Your name is {names[-1]}."
        return "You have not told me your name in this conversation."
    prefix = f"Hello {names[-1]}. " if names else ""
    return f"{prefix}(offline assistant) You said: {last}"
