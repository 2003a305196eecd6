import uuid

from sessions_app.isolation import HistoryMessage
from sessions_app.llm import offline_reply

SID = uuid.uuid4()


def history(*turns: tuple[str, str]) -> list[HistoryMessage]:
    return [HistoryMessage(user_id=1, session_id=SID, role=r, content=c) for r, c in turns]


def test_recalls_the_name_given_in_this_session():
    messages = history(
        ("user", "My name is Alice and my order is #1"),
        ("assistant", "ok"),
        ("user", "What is my name?"),
    )
    assert offline_reply(messages) == "Your name is Alice."


def test_knows_no_name_it_was_not_given():
    assert offline_reply(history(("user", "what is my name?"))) == (
        "You have not told me your name in this conversation."
    )


def test_is_deterministic_and_echoes_the_last_message():
    messages = history(("user", "my name is Mary Jane"), ("assistant", "hi"), ("user", "hello"))
    assert offline_reply(messages) == offline_reply(messages)
    assert offline_reply(messages) == "Hello Mary Jane. (offline assistant) You said: hello"
