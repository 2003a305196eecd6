"""Self-test of tests/fakes/claude.py through the real anthropic SDK (no Django needed)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import anthropic
import pytest

from tests.fakes.claude import FakeClaude, canaries_in

pytestmark: list = []

MODEL = "claude-test-model"


@pytest.fixture
def fake() -> Iterator[FakeClaude]:
    with FakeClaude() as server:
        yield server


def client_for(fake: FakeClaude, max_retries: int = 0, timeout: float = 5.0) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="test", base_url=fake.url, max_retries=max_retries, timeout=timeout
    )


def ask(
    client: anthropic.Anthropic, text: str = "hello", **kwargs: object
) -> anthropic.types.Message:
    return client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": text}], **kwargs
    )


def test_normal_answer_echoes_last_user_message(fake: FakeClaude) -> None:
    client = client_for(fake)
    msg = client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}],
            },
        ],
    )
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Echo: second"
    assert msg.model == MODEL
    assert msg.role == "assistant"
    assert msg.stop_reason == "end_turn"
    assert msg.id.startswith("msg_")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert fake.request_count() == 1
    assert fake.requests[0]["model"] == MODEL


def test_custom_responder_and_request_id(fake: FakeClaude) -> None:
    fake.set_responder(lambda body: f"model was {body['model']}")
    raw = client_for(fake).messages.with_raw_response.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["request-id"].startswith("req_")
    assert raw.parse().content[0].text == f"model was {MODEL}"


def test_stream_helper_yields_full_text(fake: FakeClaude) -> None:
    fake.set_responder(lambda body: "one two three four five")
    client = client_for(fake)
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == "one two three four five"
    assert final.content[0].text == "one two three four five"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 1


def test_create_stream_true_event_sequence(fake: FakeClaude) -> None:
    events = list(ask(client_for(fake), "abc def", stream=True))
    types = [e.type for e in events]
    # `ping` is swallowed by the SDK's decoder.
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "Echo: abc def"


def test_overloaded_twice_then_success_is_retried(fake: FakeClaude) -> None:
    fake.fail(529, times=2)
    msg = ask(client_for(fake, max_retries=3), "again")
    assert msg.content[0].text == "Echo: again"
    assert fake.request_count() == 3


def test_persistent_500_raises_after_retries(fake: FakeClaude) -> None:
    fake.fail(500, times=10)
    with pytest.raises(anthropic.InternalServerError) as info:
        ask(client_for(fake, max_retries=2))
    assert info.value.status_code == 500
    assert info.value.type == "api_error"
    assert info.value.request_id and info.value.request_id.startswith("req_")
    assert fake.request_count() == 3


def test_rate_limit_without_retries(fake: FakeClaude) -> None:
    fake.fail(429)
    with pytest.raises(anthropic.RateLimitError) as info:
        ask(client_for(fake, max_retries=0))
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert info.value.response.headers["retry-after-ms"] == "1"
    assert fake.request_count() == 1


def test_should_retry_false_header_stops_sdk_retries(fake: FakeClaude) -> None:
    fake.fail(529, times=3, should_retry=False)
    with pytest.raises(anthropic.OverloadedError):
        ask(client_for(fake, max_retries=3))
    assert fake.request_count() == 1


def test_hang_times_out(fake: FakeClaude) -> None:
    fake.hang()
    start = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        ask(client_for(fake, max_retries=0, timeout=0.5))
    assert time.monotonic() - start < 3
    # The hung slot is consumed, so the next request is answered normally.
    assert ask(client_for(fake)).content[0].text == "Echo: hello"


def test_stop_releases_hung_request_promptly() -> None:
    fake = FakeClaude().start()
    fake.hang()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ask(client_for(fake, timeout=30))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 3
    while fake.request_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    fake.stop()
    worker.join(timeout=5)
    assert time.monotonic() - start < 2
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], anthropic.APIConnectionError)


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_a_drip_answers_a_patient_client_slowly(fake: FakeClaude, headers: bool) -> None:
    fake.drip(every=0.1, count=10, headers=headers)
    start = time.monotonic()
    # Each byte comes well within the read timeout: the answer is whole, only slow.
    assert ask(client_for(fake, timeout=0.5)).content[0].text == "Echo: hello"
    assert time.monotonic() - start >= 1.0
    assert fake.hangups == 0


def test_a_stall_sends_headers_then_nothing_and_counts_the_hangup(fake: FakeClaude) -> None:
    fake.stall()
    start = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        ask(client_for(fake, timeout=0.5))
    assert time.monotonic() - start < 3
    # The client closed the connection when its read timed out, and the fake saw it.
    deadline = time.monotonic() + 3
    while fake.hangups == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.hangups == 1
    assert ask(client_for(fake)).content[0].text == "Echo: hello"


def test_malformed_body_is_a_json_error_not_api_error(fake: FakeClaude) -> None:
    # Surprise: SDK 2.13 calls response.json() unguarded for application/json bodies, so
    # the caller gets json.JSONDecodeError (a ValueError), not an anthropic.APIError,
    # and it is not retried.
    fake.malformed()
    with pytest.raises(json.JSONDecodeError):
        ask(client_for(fake, max_retries=2))
    assert fake.request_count() == 1


def test_drop_is_a_connection_error(fake: FakeClaude) -> None:
    fake.drop()
    with pytest.raises(anthropic.APIConnectionError) as info:
        ask(client_for(fake, max_retries=0))
    assert not isinstance(info.value, anthropic.APITimeoutError)
    # Connection errors are retried by the SDK.
    fake.drop()
    assert ask(client_for(fake, max_retries=1)).content[0].text == "Echo: hello"
    assert fake.request_count() == 3


def test_delay_then_normal(fake: FakeClaude) -> None:
    fake.delay(0.3)
    start = time.monotonic()
    assert ask(client_for(fake)).content[0].text == "Echo: hello"
    assert time.monotonic() - start >= 0.3


def test_missing_credentials_is_401(fake: FakeClaude) -> None:
    # SDK 2.13 sends api_key as `Authorization: Bearer`, so that is the header to omit.
    client = client_for(fake)
    with pytest.raises(anthropic.AuthenticationError) as info:
        ask(client, extra_headers={"Authorization": anthropic.Omit()})
    assert info.value.type == "authentication_error"
    assert fake.request_count() == 1
    assert "authorization" not in fake.request_headers[0]


def test_x_api_key_header_is_accepted(fake: FakeClaude) -> None:
    client = client_for(fake)
    msg = ask(client, extra_headers={"Authorization": anthropic.Omit(), "x-api-key": "k"})
    assert msg.content[0].text == "Echo: hello"


def test_empty_messages_is_400(fake: FakeClaude) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client_for(fake).messages.create(model=MODEL, max_tokens=8, messages=[])
    assert info.value.type == "invalid_request_error"


def test_unknown_path_is_404(fake: FakeClaude) -> None:
    req = urllib.request.Request(fake.url + "/v1/complete", data=b"{}", method="POST")  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)  # noqa: S310
    assert info.value.code == 404
    assert json.loads(info.value.read())["error"]["type"] == "not_found_error"
    assert fake.request_count() == 0


def test_responder_error_is_non_retryable_500(fake: FakeClaude) -> None:
    def boom(body: dict) -> str:
        raise RuntimeError("responder bug")

    fake.set_responder(boom)
    with pytest.raises(anthropic.InternalServerError, match="responder bug"):
        ask(client_for(fake, max_retries=2))
    assert fake.request_count() == 1
    assert isinstance(fake.responder_errors[0], RuntimeError)


def test_reset_clears_state(fake: FakeClaude) -> None:
    fake.set_responder(lambda body: "custom")
    ask(client_for(fake))
    fake.fail(500, times=5)
    fake.default_delay = 5.0
    fake.reset()
    assert fake.request_count() == 0
    assert ask(client_for(fake)).content[0].text == "Echo: hello"


def test_base_url_from_environment(fake: FakeClaude, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    client = anthropic.Anthropic(api_key="test", max_retries=0, timeout=5)
    assert ask(client, "env").content[0].text == "Echo: env"


def test_twenty_concurrent_clients_get_their_own_echo(fake: FakeClaude) -> None:
    fake.default_delay = 0.3
    client = client_for(fake, timeout=10)
    n = 20
    barrier = threading.Barrier(n)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = ask(client, f"thread-{i}").content[0].text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    elapsed = time.monotonic() - start
    assert not errors
    assert results == {i: f"Echo: thread-{i}" for i in range(n)}
    assert fake.request_count() == n
    # Serial handling would take n * 0.3 s.
    assert elapsed < 3


def test_canaries_in() -> None:
    text = "a CANARY-abc-123 b CANARY-X9, CANARY- and CANARY-abc-123 again; SECRET-1"
    assert canaries_in(text) == {"CANARY-abc-123", "CANARY-X9"}
    assert canaries_in(text, prefix="SECRET-") == {"SECRET-1"}
    assert canaries_in("nothing here") == set()
