"""A view cancelled while it accepts a message (a client that hung up): the accept and the
letting go of what it holds run to their end, however many cancels arrive meanwhile."""

import asyncio
import contextvars

import pytest

from sessions_app.apis.serving import to_its_end

named = contextvars.ContextVar("named", default=None)


class FakeAccept:
    """An accept that waits for ``accepting`` to be set, then holds something until its
    ``aclose`` (which waits for ``closing``) gives it back."""

    def __init__(self) -> None:
        self.accepting, self.closing = asyncio.Event(), asyncio.Event()
        self.stages: list[str] = []

    async def accept(self) -> "FakeAccept":
        self.stages.append("accepting")
        named.set("ada")  # as the accept names the user in log lines
        await self.accepting.wait()
        self.stages.append("accepted")
        return self

    async def aclose(self) -> None:
        self.stages.append("closing")
        await self.closing.wait()
        self.stages.append("closed")


async def _landed() -> None:
    """Let a cancel just requested reach the task (a few turns of the loop)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.parametrize("second_cancel_during", ["accepting", "closing"])
def test_a_view_cancelled_twice_still_accepts_and_lets_go_once(second_cancel_during):
    fake = FakeAccept()
    seen_after: list[object] = []

    async def view() -> None:
        try:
            await to_its_end(fake.accept(), undo=FakeAccept.aclose)
        finally:
            seen_after.append(named.get())

    async def scenario() -> asyncio.Task:
        viewing = asyncio.ensure_future(view())
        await _landed()
        assert fake.stages == ["accepting"]
        viewing.cancel()  # the client hung up
        await _landed()
        if second_cancel_during == "closing":
            fake.accepting.set()
            await _landed()
            assert fake.stages == ["accepting", "accepted", "closing"]
        viewing.cancel()  # and again (the server shutting down, say)
        await _landed()
        fake.accepting.set()
        await _landed()
        fake.closing.set()
        await asyncio.wait([viewing], timeout=5)
        return viewing

    viewing = asyncio.run(scenario())
    assert viewing.cancelled()  # the cancel went on, once the accept had let go
    assert fake.stages == ["accepting", "accepted", "closing", "closed"]
    assert seen_after == ["ada"]  # the context the accept set is kept
