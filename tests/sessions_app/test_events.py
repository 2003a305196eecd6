"""Turn notifications: the listener each event loop shares, and what a waiter does when
Redis is not there."""

import asyncio
import contextlib
import copy
import gc
import itertools
import logging
import threading
import time
import uuid

import pytest
import redis
from django.conf import settings

from sessions_app import events
from sessions_app.models import Turn

from ..support import wait_until


@pytest.fixture
def dead_redis(settings, private_redis):
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": private_redis.url}}
    settings.REDIS_URL = private_redis.url
    private_redis.kill()
    return private_redis


def test_a_waiter_falls_back_to_polling_when_redis_is_down(dead_redis):
    changes = events.turn_changes(turn_id=uuid.uuid4(), timeout=0.6, poll_if_down=True)
    ticks = list(changes)
    assert ticks[0] is None  # "subscribed": the caller may read the turn now
    # Then a re-read at once and on every poll until the timeout, of a status not known.
    assert len(ticks) > 2 and set(ticks[1:]) == {events.UNKNOWN}


def test_the_event_stream_is_told_when_redis_is_down(dead_redis):
    changes = events.turn_changes(turn_id=uuid.uuid4(), timeout=0.6)
    with pytest.raises(redis.exceptions.ConnectionError):
        next(changes)


# Under ASGI: one listener per event loop ----------------------------------------------------


class Stub:
    """A turn as a waiter sees it; ``refresh`` stands in for the owner-checked re-read."""

    def __init__(self, status: str = "pending") -> None:
        self.pk = uuid.uuid4()
        self.status = status
        self.updated_at = 0

    @property
    def is_finished(self) -> bool:
        return self.status in ("completed", "suppressed", "failed")


def channel(turn_id: object) -> str:
    """The turn's channel, as the workers publish on it."""
    return f"{settings.CACHES['default'].get('KEY_PREFIX', 'isolation')}:turn:{turn_id}:events"


def subscribers(url: str, turn_id: object) -> int:
    with redis.Redis.from_url(url) as client:
        [(_, count)] = client.pubsub_numsub(channel(turn_id))
    return count


def published(url: str, turn_id: object, status: str | None = None) -> None:
    """Publish on the turn's channel, as a worker does: ``status``, or the turn's id."""
    with redis.Redis.from_url(url) as client:
        client.publish(channel(turn_id), str(turn_id) if status is None else status)


async def until(predicate, timeout: float = 10) -> bool:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def test_one_subscription_per_turn_fans_each_change_out_to_every_waiter(settings):
    url, turn, other = settings.REDIS_URL, uuid.uuid4(), uuid.uuid4()

    async def scenario() -> None:
        listener = events.turn_listener()
        assert events.turn_listener() is listener  # one per event loop
        waiters = [await listener.subscribe(turn) for _ in range(3)]
        bystander = await listener.subscribe(other)
        assert subscribers(url, turn) == 1  # three waiters, one subscription
        published(url, turn)
        assert [await waiter.wait(10) for waiter in waiters] == [True, True, True]
        assert not bystander.changed.is_set()  # only the turn's own waiters are woken
        for waiter in waiters:
            waiter.close()
        bystander.close()

    asyncio.run(scenario())


def test_the_channel_is_unsubscribed_when_its_last_waiter_leaves(settings):
    url, turn = settings.REDIS_URL, uuid.uuid4()

    async def scenario() -> None:
        listener = events.turn_listener()
        first, second = await listener.subscribe(turn), await listener.subscribe(turn)
        first.close()
        first.close()  # idempotent
        await asyncio.sleep(0.1)
        assert subscribers(url, turn) == 1  # the second still waits
        second.close()
        assert await until(lambda: subscribers(url, turn) == 0)
        again = await listener.subscribe(turn)  # and a newcomer subscribes afresh
        assert subscribers(url, turn) == 1
        published(url, turn)
        assert await again.wait(10)
        again.close()

    asyncio.run(scenario())


def test_the_watch_subscribes_before_its_first_read(settings):
    url, turn = settings.REDIS_URL, Stub()
    seen_at_read = []

    def refresh(current: Stub) -> Stub:
        seen_at_read.append(subscribers(url, turn.pk))
        return current

    async def scenario() -> None:
        watch = events.AsyncTurnWatch(turn=turn, refresh=refresh, timeout=5)
        assert await watch.start() is turn
        watch.close()

    asyncio.run(scenario())
    assert seen_at_read == [1]


def test_a_watch_wakes_on_a_change_and_ends_with_the_turn(settings):
    url, stored = settings.REDIS_URL, Stub()  # ``stored``: the row, as a re-read finds it

    def refresh(current: Stub) -> Stub:
        return copy.copy(stored)

    async def scenario() -> list[str]:
        watch = events.AsyncTurnWatch(turn=copy.copy(stored), refresh=refresh, timeout=60, tick=60)
        statuses = [(await watch.start()).status]
        for status in ("running", "completed"):
            stored.status, stored.updated_at = status, stored.updated_at + 1
            published(url, stored.pk)
            statuses.append((await anext(watch)).status)
        assert [seen async for seen in watch] == []  # ended: nothing more
        watch.close()
        return statuses

    assert asyncio.run(scenario()) == ["pending", "running", "completed"]


def test_a_watch_polls_when_the_listener_loses_redis(settings, private_redis):
    settings.REDIS_URL = private_redis.url
    stored, reads = Stub(), []

    def refresh(current: Stub) -> Stub:
        reads.append(current.status)
        if len(reads) >= 4:  # it ends while no notification can come
            stored.status, stored.updated_at = "completed", 1
        return copy.copy(stored)

    async def scenario() -> list[str]:
        # Without polling, the watch would see nothing before its timeout (no idle tick).
        watch = events.AsyncTurnWatch(
            turn=copy.copy(stored), refresh=refresh, timeout=60, tick=120, poll_if_down=True
        )
        await watch.start()
        private_redis.kill()
        statuses = [seen.status async for seen in watch if seen is not None]
        assert watch.subscription.lost
        watch.close()
        return statuses

    assert asyncio.run(scenario()) == ["completed"]


def test_a_watch_is_told_when_redis_is_down_unless_it_may_poll(dead_redis):
    def refresh(current: Stub) -> Stub:
        return current

    async def scenario() -> None:
        watch = events.AsyncTurnWatch(turn=Stub(), refresh=refresh, timeout=1)
        with pytest.raises(redis.exceptions.ConnectionError):
            await watch.start()
        polling = events.AsyncTurnWatch(turn=Stub(), refresh=refresh, timeout=1, poll_if_down=True)
        assert (await polling.start()).status == "pending"
        polling.close()

    asyncio.run(scenario())


def test_a_watch_told_of_a_status_it_does_not_read_sleeps_on(settings):
    url, stored, reads = settings.REDIS_URL, Stub(), []

    def refresh(current: Stub) -> Stub:
        reads.append(stored.status)
        return copy.copy(stored)

    async def scenario() -> str:
        watch = events.AsyncTurnWatch(
            turn=copy.copy(stored), refresh=refresh, timeout=60, tick=60, unread=("running",)
        )
        await watch.start()
        stored.status, stored.updated_at = "running", 1
        published(url, stored.pk, "running")  # not read: a wait has nothing to answer yet
        stored.status, stored.updated_at = "completed", 2
        published(url, stored.pk, "completed")
        ended = await anext(watch)
        watch.close()
        return ended.status

    assert asyncio.run(scenario()) == "completed"
    assert reads == ["pending", "completed"]


def test_a_watch_subscribed_before_its_turn_can_change_reads_only_when_told(settings):
    """A wait's watch of a turn not queued yet: no first read; an unknown change is checked,
    "running" is not read, and the end is read at once, with ``refresh_told``."""
    url, stored, reads = settings.REDIS_URL, Stub(), []

    def refresh(current: Stub) -> Stub:
        reads.append("checked")
        return copy.copy(stored)

    def refresh_told(current: Stub) -> Stub:
        reads.append(f"read {stored.status}")
        return copy.copy(stored)

    async def scenario() -> str:
        watch = events.AsyncTurnWatch(
            turn=copy.copy(stored),
            refresh=refresh,
            refresh_told=refresh_told,
            timeout=60,
            tick=60,
            unread=("running",),
        )
        await watch.subscribe()
        assert subscribers(url, stored.pk) == 1 and reads == []
        ended = asyncio.ensure_future(anext(watch))
        published(url, stored.pk, "garbled")  # a change of a status not named: checked, nothing new
        assert await until(lambda: reads == ["checked"])
        stored.status, stored.updated_at = "running", 1
        published(url, stored.pk, "running")
        stored.status, stored.updated_at = "completed", 2
        published(url, stored.pk, "completed")
        status = (await ended).status
        watch.close()
        return status

    assert asyncio.run(scenario()) == "completed"
    assert reads == ["checked", "read completed"]


# Under WSGI: the same listener, on an event loop of the process's own -----------------------


def pubsub_connections(url: str) -> int:
    """Pub/sub connections to this test's Redis database (each xdist worker has its own)."""
    db = int(url.rsplit("/", 1)[1])
    with redis.Redis.from_url(url) as client:
        return sum(1 for c in client.client_list(_type="pubsub") if int(c["db"]) == db)


def test_waiting_threads_share_one_connection_and_each_hears_its_own_turn(settings):
    url = settings.REDIS_URL
    turns = [uuid.uuid4() for _ in range(6)]
    heard: dict = {}
    ready = threading.Barrier(len(turns) + 1)

    def wait(turn_id) -> None:
        changes = events.turn_changes(turn_id=turn_id, timeout=10, tick=60)
        next(changes)  # subscribed
        ready.wait()
        heard[turn_id] = next(changes)
        changes.close()

    before = pubsub_connections(url)  # those of listeners other tests left
    threads = [threading.Thread(target=wait, args=(t,)) for t in turns]
    for thread in threads:
        thread.start()
    ready.wait(10)
    assert pubsub_connections(url) <= before + 1  # six waits, one connection at most
    with redis.Redis.from_url(url) as client:
        for n, turn_id in enumerate(turns):
            client.publish(channel(turn_id), "completed" if n % 2 else "running")
    for thread in threads:
        thread.join(10)
    assert heard == {t: "completed" if n % 2 else "running" for n, t in enumerate(turns)}
    assert all(subscribers(url, t) == 0 for t in turns) or asyncio.run(
        until(lambda: all(subscribers(url, t) == 0 for t in turns))
    )


def test_a_listener_that_redis_url_no_longer_names_lets_its_connection_go(
    settings, private_redis, caplog
):
    """Settings changed (as tests change them): the loop's next listener is a new one, and
    the old one's connection and reader go with it, its waiters polling, not left open."""
    caplog.set_level(logging.INFO, logger="sessions_app.events.listener")
    shared, turn = settings.REDIS_URL, uuid.uuid4()  # not this process's: a SUBSCRIBE
    settings.REDIS_URL = private_redis.url

    async def scenario() -> None:
        old = events.turn_listener()
        held = await old.subscribe(turn)
        assert subscribers(private_redis.url, turn) == 1
        settings.REDIS_URL = shared
        assert events.turn_listener() is not old
        assert await until(lambda: held.lost and subscribers(private_redis.url, turn) == 0)
        held.close()
        # Whoever still holds it connects no more (its connection would outlive it again).
        with pytest.raises(redis.exceptions.ConnectionError):
            await old.subscribe(turn)
        assert old._pubsub is None and old._reader is None
        assert subscribers(private_redis.url, turn) == 0

    asyncio.run(scenario())
    # Retired on purpose, not lost: an operator reading the log is not told of an outage.
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "listener" in r.name]
    assert (logging.INFO, "turn listener of a former REDIS_URL retired; its waiters poll") in said
    assert not [m for level, m in said if level >= logging.WARNING]


def test_a_forked_process_starts_a_listener_of_its_own(monkeypatch):
    from sessions_app.events import loop_thread

    first = loop_thread._process_loop()
    assert loop_thread._process_loop() is first
    monkeypatch.setattr(loop_thread.os, "getpid", lambda: first.pid + 1)
    child = loop_thread._process_loop()
    # A forked child inherits the parent's loop object but not its thread: it needs its own.
    assert child is not first and child.thread.is_alive()
    child.loop.call_soon_threadsafe(child.loop.stop)


def test_an_end_told_before_the_waiter_takes_it_is_not_hidden_by_a_later_running(settings):
    """A redelivered run's claim published after another run's end must not hide the end."""
    turn = uuid.uuid4()

    async def scenario() -> list:
        listener = events.turn_listener()
        waiter = await listener.subscribe(turn)
        waiter.told("completed")
        waiter.told("running")
        first = await waiter.take(1)
        waiter.told("running")  # once the end was taken, a new status is news again
        second = await waiter.take(1)
        nothing = await waiter.take(0.05)
        waiter.close()
        return [first, second, nothing]

    assert asyncio.run(scenario()) == ["completed", "running", None]


def test_a_listener_whose_subscription_is_never_confirmed_drops_its_connection(
    settings, private_redis, monkeypatch
):
    """A Redis that stops answering without closing the connection (a failover, a frozen
    host): the next subscriber must connect afresh, not queue behind a dead socket."""
    from sessions_app.events import listener as listening

    settings.REDIS_URL = private_redis.url
    monkeypatch.setattr(listening, "SUBSCRIBE_TIMEOUT_SECONDS", 0.5)

    async def scenario() -> bool:
        listener = events.turn_listener()
        (await listener.subscribe(uuid.uuid4())).close()
        assert listener._pubsub is not None
        private_redis.freeze()
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                await listener.subscribe(uuid.uuid4())
            return await until(lambda: listener._pubsub is None, timeout=5)
        finally:
            private_redis.thaw()

    assert asyncio.run(scenario())


def test_a_subscribe_queued_behind_a_lost_connection_is_not_sent_on_the_next(settings):
    """The connection is lost (here: given up as unanswering) while a waiter's SUBSCRIBE
    waits its turn: the loss tells that waiter (it polls) and forgets its channel, so the
    command must not go out on the next connection, which would hold a channel no one
    waits on, and unsubscribe it never."""
    url, kept, late = settings.REDIS_URL, uuid.uuid4(), uuid.uuid4()

    async def scenario() -> tuple[bool, int, int]:
        listener = events.turn_listener()
        first = await listener.subscribe(kept)
        async with listener._lock:  # the commands below queue, in this order
            listener._later(listener._drop_unanswering())
            subscription, ready = listener.enter(late)
        told = await asyncio.wait_for(asyncio.shield(ready), 5)
        await asyncio.sleep(0.3)  # the queued command has had its turn by then
        first.close()
        subscription.close()
        return told, subscribers(url, late), len(listener.channels)

    told, subscribed, channels = asyncio.run(scenario())
    assert told is False  # the waiter is told the connection is gone: it polls
    assert (subscribed, channels) == (0, 0)


def test_a_status_the_waiter_skips_does_not_wake_it(settings):
    turn = uuid.uuid4()

    async def scenario() -> list:
        listener = events.turn_listener()
        waiter = await listener.subscribe(turn)
        waiter.told("running")
        skipped = await waiter.take(0.1, skip=Turn.IN_FLIGHT)  # taken, waited past
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, waiter.told, "running")
        loop.call_later(0.1, waiter.told, "completed")
        ended = await waiter.take(5, skip=Turn.IN_FLIGHT)
        waiter.told("running")
        waiter.lost = True  # the waiter must hear of a loss, whatever the status
        lost = await waiter.take(1, skip=Turn.IN_FLIGHT)
        waiter.close()
        return [skipped, ended, lost]

    assert asyncio.run(scenario()) == [None, "completed", "running"]


def test_a_waiting_thread_is_not_woken_for_a_status_it_does_not_read(settings):
    url, turn = settings.REDIS_URL, uuid.uuid4()
    changes = events.turn_changes(turn_id=turn, timeout=10, tick=60, unread=Turn.IN_FLIGHT)
    assert next(changes) is None  # subscribed
    for delay, status in ((0.1, "running"), (0.4, "completed")):
        threading.Timer(delay, published, (url, turn, status)).start()
    assert next(changes) == "completed"  # not "running" first
    changes.close()


# Under WSGI: a waiting thread, woken by the listener without a coroutine ---------------------


def _thread_subscription(turn_id: object):
    from sessions_app.events import loop_thread

    return loop_thread.subscribe_from_thread(turn_id)


def _thread_hears_the_end(url: str, turn: object) -> bool:
    """A waiting thread subscribes to ``turn``; True if it hears the end published next."""
    waiter = _thread_subscription(turn)
    try:
        published(url, turn, "completed")
        return waiter.wait(5) == "completed"
    finally:
        waiter.close()


def _from_the_loop(fn, *args) -> None:
    """Run ``fn`` on the listener's loop, as the listener calls a subscription's methods."""
    from sessions_app.events import loop_thread

    done = threading.Event()

    def call() -> None:
        fn(*args)
        done.set()

    loop_thread._process_loop().loop.call_soon_threadsafe(call)
    assert done.wait(5)


def test_a_waiting_thread_keeps_an_end_told_before_it_takes_it(settings):
    """A redelivered run's claim published after another run's end must not hide the end."""
    waiter = _thread_subscription(uuid.uuid4())
    told = waiter._subscription.told
    try:
        _from_the_loop(told, "completed")
        _from_the_loop(told, "running")
        assert waiter.wait(1) == "completed"
        _from_the_loop(told, "running")  # once the end was taken, a new status is news again
        assert waiter.wait(1) == "running"
        assert waiter.wait(0.05) is None
    finally:
        waiter.close()


def test_a_waiting_thread_skips_what_it_does_not_read_but_hears_a_loss(settings):
    waiter = _thread_subscription(uuid.uuid4())
    held = waiter._subscription
    try:
        _from_the_loop(held.told, "running")
        assert waiter.wait(0.1, skip=Turn.IN_FLIGHT) is None  # taken, waited past
        for delay, status in ((0.05, "running"), (0.1, "completed")):
            threading.Timer(delay, _from_the_loop, (held.told, status)).start()
        assert waiter.wait(5, skip=Turn.IN_FLIGHT) == "completed"
        _from_the_loop(held.told_lost)
        assert waiter.wait(1, skip=Turn.IN_FLIGHT) == events.UNKNOWN and waiter.lost
    finally:
        waiter.close()


def test_a_status_its_subscription_skips_does_not_even_wake_the_thread(settings):
    """A ``?wait`` does nothing on "running": the listener does not wake its thread for it
    (a futex and a switch of threads), yet an end or a loss still does."""
    from sessions_app.events import loop_thread

    waiter = loop_thread.subscribe_from_thread(uuid.uuid4(), skip=Turn.IN_FLIGHT)
    held = waiter._subscription
    try:
        _from_the_loop(held.told, "running")
        assert not held.woken.is_set() and held.status == "running"
        _from_the_loop(held.told, "completed")
        assert held.woken.is_set()
        _from_the_loop(held.told, "running")  # a redelivered run's claim, after the end
        assert waiter.wait(1, skip=Turn.IN_FLIGHT) == "completed"
        _from_the_loop(held.told, "pending")
        assert not held.woken.is_set()
        _from_the_loop(held.told_lost)
        assert waiter.wait(1, skip=Turn.IN_FLIGHT) == events.UNKNOWN and waiter.lost
    finally:
        waiter.close()


def test_a_waiting_thread_is_told_when_the_listener_loop_is_stuck(settings, monkeypatch):
    """A loop that runs nothing owes notifications it will never deliver: the waiter polls."""
    from sessions_app.events import loop_thread

    monkeypatch.setattr(loop_thread, "_GRACE_SECONDS", 0.2)
    waiter = _thread_subscription(uuid.uuid4())
    loop = loop_thread._process_loop()
    release = threading.Event()
    try:
        assert waiter.wait(0.05) is None  # a live loop: simply nothing yet
        loop.loop.call_soon_threadsafe(release.wait, 10)  # the loop runs nothing now
        with pytest.raises(redis.exceptions.TimeoutError):
            # Past a beat and the grace without one: the loop counts as stuck.
            waiter.wait(loop_thread._BEAT_SECONDS + 0.5)
    finally:
        release.set()
        waiter.close()
    _from_the_loop(lambda: None)
    assert not loop.stuck()  # its timers run again


def test_a_busy_loop_delays_a_thread_subscription_but_fails_nothing(settings, monkeypatch):
    """The confirmation is timed from when the loop enters the subscription: a loop busy for
    longer than that must neither fail the subscription nor drop the process's connection,
    which every other waiter of the process shares."""
    from sessions_app.events import loop_thread

    monkeypatch.setattr(loop_thread, "SUBSCRIBE_TIMEOUT_SECONDS", 0.5)
    held = _thread_subscription(uuid.uuid4())  # another waiter of the process
    loop = loop_thread._process_loop()
    release = threading.Event()
    loop.loop.call_soon_threadsafe(release.wait, 10)
    threading.Timer(1.0, release.set).start()  # busy twice the subscription's timeout
    try:
        late = _thread_subscription(uuid.uuid4())
        late.close()
        assert not held.lost
    finally:
        release.set()
        held.close()


def test_a_thread_gives_up_a_subscription_redis_never_confirms(
    settings, private_redis, monkeypatch
):
    """From a thread as from the loop: no confirmation in time is a TimeoutError, the
    dead connection is dropped, and the given-up channel is not left subscribed."""
    from sessions_app.events import listener as listening
    from sessions_app.events import loop_thread

    settings.REDIS_URL = private_redis.url
    monkeypatch.setattr(loop_thread, "SUBSCRIBE_TIMEOUT_SECONDS", 0.5)
    _thread_subscription(uuid.uuid4()).close()  # connected
    listener = [
        found
        for loop, found in listening._listeners.items()
        if loop is loop_thread._process_loop().loop
    ][0]
    private_redis.freeze()
    try:
        given_up = uuid.uuid4()
        with pytest.raises(redis.exceptions.TimeoutError):
            _thread_subscription(given_up)
        assert asyncio.run(until(lambda: listener._pubsub is None, timeout=5))
        assert channel(given_up) not in listener.channels
    finally:
        private_redis.thaw()
    waiter = _thread_subscription(uuid.uuid4())  # the next one connects afresh
    waiter.close()


def test_a_thread_whose_loop_never_answers_leaves_no_subscription_behind(settings, monkeypatch):
    """If the loop runs the thread's subscription only after the thread gave up on it,
    it must not subscribe a channel that no one will ever close."""
    from sessions_app.events import listener as listening
    from sessions_app.events import loop_thread

    monkeypatch.setattr(loop_thread, "SUBSCRIBE_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(loop_thread, "_GRACE_SECONDS", 0.2)
    loop = loop_thread._process_loop()
    release = threading.Event()
    loop.loop.call_soon_threadsafe(release.wait, 5)  # the loop is busy for a while
    turn = uuid.uuid4()
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            _thread_subscription(turn)
    finally:
        release.set()
    _from_the_loop(lambda: None)  # the loop has run the late subscription by now
    found = listening._listeners.get(loop.loop)
    assert found is None or channel(turn) not in found.channels


# A process's own turns: under one pattern, no subscription each ----------------------------


def test_a_turn_id_of_this_process_is_a_random_uuid4_under_its_tag(monkeypatch):
    from sessions_app.events import notify

    ids = [events.new_turn_id() for _ in range(50)]
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)
    assert len({str(i)[:8] for i in ids}) == 1 and len(set(ids)) == 50
    assert all(notify.own_turn(i) for i in ids)
    assert not notify.own_turn(uuid.UUID(int=ids[0].int ^ (1 << 127)))  # another tag
    pid = notify.os.getpid()
    monkeypatch.setattr(notify, "_tag", notify._tag)  # this process's, back after the test
    monkeypatch.setattr(notify.os, "getpid", lambda: pid + 1)  # a forked child
    assert not notify.own_turn(ids[0])  # tags its own turns, and hears only those


def test_a_listener_follows_a_new_tag_with_a_pattern_of_its_own(settings, monkeypatch):
    """A tag changes only in a forked child, whose listener is new; a listener that saw the
    tag change would otherwise hold waits under a pattern their channels do not match."""
    from sessions_app.events import notify

    url, first = settings.REDIS_URL, events.new_turn_id()
    waiter = _thread_subscription(first)
    waiter.close()
    monkeypatch.setattr(notify, "_tag", (notify.os.getpid(), "0badc0de"))
    turn = events.new_turn_id()
    assert str(turn).startswith("0badc0de-")
    assert _thread_hears_the_end(url, turn)


def test_a_wait_on_a_turn_of_this_process_subscribes_no_channel_of_its_own(settings):
    url = settings.REDIS_URL
    thread_turn, loop_turn = events.new_turn_id(), events.new_turn_id()
    waiter = _thread_subscription(thread_turn)
    try:
        assert subscribers(url, thread_turn) == 0  # the process's pattern carries it
        published(url, thread_turn, "completed")
        assert waiter.wait(5) == "completed"
    finally:
        waiter.close()

    async def scenario() -> str | None:
        held = await events.turn_listener().subscribe(loop_turn)
        try:
            assert subscribers(url, loop_turn) == 0
            published(url, loop_turn, "failed")
            return await held.take(5)
        finally:
            held.close()

    assert asyncio.run(scenario()) == "failed"


def test_waits_on_this_process_s_turns_hear_a_lost_connection_and_the_next_reconnects(
    settings, private_redis
):
    settings.REDIS_URL = private_redis.url
    waiter = _thread_subscription(events.new_turn_id())
    try:
        private_redis.kill()
        assert waiter.wait(5) == events.UNKNOWN and waiter.lost  # the waiter polls now
    finally:
        waiter.close()
    private_redis.start()
    turn = events.new_turn_id()
    waiter = _thread_subscription(turn)  # connects afresh and subscribes the pattern again
    try:
        published(private_redis.url, turn, "completed")
        assert waiter.wait(5) == "completed"
    finally:
        waiter.close()


def test_a_redis_user_refused_patterns_gets_its_turns_subscribed_one_by_one(
    settings, private_redis
):
    """ACL channel rules match a pattern literally: a user allowed "<prefix>:turn:*" may
    SUBSCRIBE any turn's channel but not PSUBSCRIBE the process's pattern. The first wait on
    a turn of this process is told notifications are unavailable (it polls); the next ones
    subscribe their channels; a waiter on the same connection hears on, undisturbed."""
    from sessions_app.events.notify import _prefix

    admin = private_redis.client()
    admin.acl_setuser(
        "app", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"],
        channels=[f"{_prefix()}:turn:*"], reset_channels=True,
    )  # fmt: skip
    settings.REDIS_URL = f"redis://app:pw@127.0.0.1:{private_redis.port}/0"
    elsewhere = uuid.uuid4()  # a turn accepted in another process: its channel alone
    bystander = _thread_subscription(elsewhere)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            _thread_subscription(events.new_turn_id())
        turn = events.new_turn_id()
        waiter = _thread_subscription(turn)
        try:
            assert subscribers(private_redis.url, turn) == 1  # its channel, subscribed alone
            published(private_redis.url, turn, "completed")
            assert waiter.wait(5) == "completed"
        finally:
            waiter.close()
        published(private_redis.url, elsewhere, "failed")
        assert bystander.wait(5) == "failed" and not bystander.lost
    finally:
        bystander.close()


def _process_listener():
    from sessions_app.events import listener as listening
    from sessions_app.events import loop_thread

    return listening._listeners[loop_thread._process_loop().loop]


@pytest.fixture
def direct_only(monkeypatch):
    """From here on a thread subscription that would need the loop fails the test: each
    must be entered by its thread directly."""
    from sessions_app.events import loop_thread

    def entering(*args):
        raise AssertionError("entered through the loop")

    def arm() -> None:
        monkeypatch.setattr(loop_thread, "_Entering", entering)

    return arm


def test_a_thread_enters_and_leaves_its_own_turns_without_the_loop_once_the_pattern_is_heard(
    settings, monkeypatch
):
    """Past the first wait of a connection, the process's pattern is confirmed: a wait on
    one of its turns needs no command, so its thread registers it itself. Shown with the
    loop busy: a wait that needed the loop would not be entered until the loop ran it."""
    import time

    from sessions_app.events import loop_thread

    url = settings.REDIS_URL
    _thread_subscription(events.new_turn_id()).close()  # through the loop: the pattern
    listener, loop = _process_listener(), loop_thread._process_loop()
    monkeypatch.setattr(loop_thread, "SUBSCRIBE_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(loop_thread, "_GRACE_SECONDS", 0.5)
    release, resumed = threading.Event(), threading.Event()

    def busy() -> None:
        loop.beat = time.monotonic()  # busy, not yet stuck
        release.wait(10)
        resumed.set()

    loop.loop.call_soon_threadsafe(busy)  # the loop runs nothing else from now on
    turn = events.new_turn_id()
    try:
        waiter = _thread_subscription(turn)
        assert channel(turn) in listener.channels
        waiter.close()
        assert channel(turn) not in listener.channels  # left without the loop too
        with pytest.raises(redis.exceptions.TimeoutError):
            _thread_subscription(uuid.uuid4())  # another process's turn: its SUBSCRIBE waits
        assert not resumed.is_set()  # the loop was busy throughout
    finally:
        release.set()
    assert _thread_hears_the_end(url, turn)


def test_a_thread_does_not_enter_directly_while_the_pattern_is_unconfirmed(settings, private_redis):
    from sessions_app.events import loop_thread

    settings.REDIS_URL = private_redis.url
    _thread_subscription(uuid.uuid4()).close()  # connected; no pattern asked for yet
    listener = _process_listener()
    private_redis.freeze()
    outcome: list = []
    first = threading.Thread(
        target=lambda: outcome.append(_thread_subscription(events.new_turn_id()))
    )
    try:
        first.start()  # enters through the loop and asks for the pattern
        assert asyncio.run(until(lambda: listener._own is not None, timeout=5))
        assert listener.enter_own(events.new_turn_id(), loop_thread._Woken) is None
    finally:
        private_redis.thaw()
        first.join(10)
    assert len(outcome) == 1  # confirmed once Redis answered
    outcome[0].close()


def test_a_thread_entered_without_the_loop_hears_a_lost_connection(
    settings, private_redis, direct_only
):
    settings.REDIS_URL = private_redis.url
    _thread_subscription(events.new_turn_id()).close()  # through the loop: the pattern
    direct_only()
    turn = events.new_turn_id()
    waiter = _thread_subscription(turn)
    listener = _process_listener()
    assert channel(turn) in listener.channels
    try:
        private_redis.kill()
        assert waiter.wait(5) == events.UNKNOWN and waiter.lost
    finally:
        waiter.close()
    assert listener.channels == {} and listener._own is None
    with pytest.raises(AssertionError, match="through the loop"):
        _thread_subscription(events.new_turn_id())  # a new connection: the loop's again


def test_threads_entering_and_leaving_their_own_turns_at_once_each_hear_their_own(
    settings, direct_only
):
    """Threads enter and leave channels while the loop fans notifications out to them: no
    waiter hears another's turn, none misses its own, and nothing is left behind."""
    url = settings.REDIS_URL
    _thread_subscription(events.new_turn_id()).close()  # the pattern, confirmed
    direct_only()
    failures: list[str] = []

    def waits(n: int) -> None:
        try:
            with redis.Redis.from_url(url) as client:
                for i in range(60):
                    turn, status = events.new_turn_id(), ("completed", "failed")[(n + i) % 2]
                    with contextlib.ExitStack() as held:
                        first = _thread_subscription(turn)
                        held.callback(first.close)
                        second = _thread_subscription(turn)
                        held.callback(second.close)
                        client.publish(channel(turn), status)
                        heard = first.wait(5), second.wait(5)
                        if heard != (status, status):
                            failures.append(f"{turn}: {heard} for {status}")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failures.append(repr(exc))

    threads = [threading.Thread(target=waits, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert not any(t.is_alive() for t in threads)
    listener = _process_listener()
    assert asyncio.run(until(lambda: not listener.channels, timeout=5)), listener.channels


def test_threads_churning_on_one_channel_as_it_is_published_to_lose_nothing(settings):
    """Entering and leaving the channel the loop is fanning a notification out on: the
    listener's connection stays up and a waiter that stays hears every change."""
    import sys

    url = settings.REDIS_URL
    _thread_subscription(events.new_turn_id()).close()  # the pattern, confirmed
    listener = _process_listener()
    connection = listener._pubsub
    turn = events.new_turn_id()
    stays = _thread_subscription(turn)
    stop = threading.Event()
    failures: list[str] = []

    def publish() -> None:
        with redis.Redis.from_url(url) as client:
            while not stop.is_set():
                client.publish(channel(turn), "running")

    def churn() -> None:
        try:
            while not stop.is_set():
                _thread_subscription(turn).close()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failures.append(repr(exc))

    threads = [threading.Thread(target=publish) for _ in range(2)]
    threads += [threading.Thread(target=churn) for _ in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can
    try:
        for thread in threads:
            thread.start()
        stop.wait(2)
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        for thread in threads:
            thread.join(10)
    try:
        assert failures == [] and listener._pubsub is connection and not stays.lost
        published(url, turn, "completed")
        assert stays.wait(5, skip=Turn.IN_FLIGHT) == "completed"
    finally:
        stays.close()
    assert asyncio.run(until(lambda: not listener.channels, timeout=5)), listener.channels


def _holding(subscription):
    """A waiter's generator, as ``turn_changes`` is: it closes its subscription when it
    is finalized."""
    try:
        yield
    finally:
        subscription.close()


def _forget_a_waiter(subscription) -> None:
    """Collections off, leave a started waiter holding ``subscription`` reachable only
    through a cycle: only a collection will finalize it (and close the subscription)."""
    gc.disable()
    waiter = _holding(subscription)
    next(waiter)
    cycle: dict = {"waiter": waiter}
    cycle["self"] = cycle


def _hangs(run_with) -> list[int]:
    """``run_with(allocations)`` starts a run with a collection due that many allocations
    in, and returns an Event its end sets; the first count whose run hung (not done in 5 s),
    if any. Then what no collection reached yet is collected: its waiters close theirs."""
    hung: list[int] = []
    try:
        for allocations in range(1, 40):
            if not run_with(allocations).wait(5):
                hung.append(allocations)
                break
    finally:
        gc.enable()
    gc.collect()
    return hung


@contextlib.contextmanager
def _a_collection_after(allocations: int):
    """Collections back on, the next one due that many allocations from now."""
    threshold = gc.get_threshold()
    gc.set_threshold(gc.get_count()[0] + allocations)
    gc.enable()
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


def test_a_subscription_closed_by_a_finalizer_inside_the_listener_s_lock_deadlocks_nothing(
    settings,
):
    """A collection can start at any allocation, inside the listener's lock too, and
    finalize a forgotten waiter's generator there, which closes its subscription in the
    thread that holds the lock: closing must not wait for it."""
    from sessions_app.events import loop_thread

    _thread_subscription(events.new_turn_id()).close()  # the pattern, confirmed
    listener = _process_listener()

    def in_a_thread(allocations: int) -> threading.Event:
        finished = threading.Event()

        def run() -> None:
            _forget_a_waiter(_thread_subscription(events.new_turn_id()))
            with _a_collection_after(allocations):
                listener.enter_own(events.new_turn_id(), loop_thread._Woken).close()
            finished.set()

        threading.Thread(target=run, daemon=True).start()
        return finished

    assert _hangs(in_a_thread) == []
    assert asyncio.run(until(lambda: not listener.channels, timeout=5)), listener.channels


def test_a_subscription_closed_by_a_finalizer_on_the_loop_inside_its_lock_deadlocks_nothing(
    settings,
):
    """The same on the listener's loop, whose own collections can finalize a forgotten
    waiter of any thread while it enters, leaves or fans out under the lock."""
    from sessions_app.events import loop_thread

    _thread_subscription(events.new_turn_id()).close()  # the pattern, confirmed
    listener, loop = _process_listener(), loop_thread._process_loop()

    def on_the_loop(allocations: int) -> threading.Event:
        held, finished = _thread_subscription(events.new_turn_id()), threading.Event()

        def run() -> None:
            _forget_a_waiter(held)
            try:
                with _a_collection_after(allocations):
                    entered, _ = listener.enter(events.new_turn_id(), loop_thread._Woken)
                    entered.close()
            finally:
                finished.set()

        loop.loop.call_soon_threadsafe(run)
        return finished

    assert _hangs(on_the_loop) == []
    assert asyncio.run(until(lambda: not listener.channels, timeout=5)), listener.channels


@pytest.mark.parametrize("redis_url", ["", "redis://127.0.0.1:1/0"])
def test_a_polling_watch_still_sends_its_keepalive(settings, redis_url):
    """Without Redis (the embedded default, or Redis down) the watch polls every fraction of
    a second, never idle: the keep-alive must still come every tick, or a stream says
    nothing for minutes and a client that hung up is never found out."""
    settings.REDIS_URL = redis_url
    turn, tick = Stub(), 0.3
    watch = events.turn_watch(
        turn=turn, refresh=lambda current: current, timeout=30, tick=tick, poll_if_down=True
    )
    started = time.monotonic()
    seen = list(itertools.islice(watch, 4))  # before: nothing more until the timeout
    watch.close()
    assert seen == [turn, None, None, None]
    assert time.monotonic() - started >= 3 * tick  # one a tick, not one a poll


@pytest.mark.parametrize("redis_url", ["", "redis://127.0.0.1:1/0"])
def test_a_polling_async_watch_still_sends_its_keepalive(settings, redis_url):
    settings.REDIS_URL = redis_url
    turn, tick = Stub(), 0.3

    async def scenario() -> list:
        watch = events.AsyncTurnWatch(
            turn=turn, refresh=lambda current: current, timeout=30, tick=tick, poll_if_down=True
        )
        await watch.start()
        seen = [await anext(watch) for _ in range(3)]
        watch.close()
        return seen

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == [None, None, None]
    assert time.monotonic() - started >= 3 * tick


@pytest.mark.parametrize("own", [True, False], ids=["this process's turn", "another's turn"])
def test_a_waiter_polling_since_a_lost_connection_subscribes_again(
    settings, private_redis, monkeypatch, own
):
    """After Redis came back (a failover, a restart), a waiter that had lost its
    subscription polled to its end: up to STREAM_MAX_SECONDS of re-reads four times a
    second, for every stream open in every process at the loss."""
    from sessions_app.events import notify

    monkeypatch.setattr(notify, "RESUBSCRIBE_SECONDS", 0.3)
    settings.REDIS_URL = private_redis.url
    turn = events.new_turn_id() if own else uuid.uuid4()
    changes = events.turn_changes(turn_id=turn, timeout=20, tick=120)
    assert next(changes) is None
    heard: list[str | None] = []

    def wait() -> None:
        for change in changes:
            heard.append(change)
            if change == "completed":
                return

    waiting = threading.Thread(target=wait)
    waiting.start()
    try:
        private_redis.kill()
        # Lost: a look at once, then on a timer.
        assert wait_until(lambda: heard, 10, interval=0.02)
        private_redis.start()
        time.sleep(3)  # subscribed again meanwhile, then one look more, then quiet
        polled = len(heard)
        time.sleep(1)
        assert len(heard) == polled, "still polling"
        assert 2 <= polled < 20 and set(heard) == {events.UNKNOWN}, heard
        published(private_redis.url, turn, "completed")
        waiting.join(5)
        assert heard[-1] == "completed"
    finally:
        waiting.join(30)
        changes.close()


def test_an_async_watch_polling_since_a_lost_connection_subscribes_again(
    settings, private_redis, monkeypatch
):
    from sessions_app.events import watch as watch_module

    monkeypatch.setattr(watch_module, "RESUBSCRIBE_SECONDS", 0.3)
    settings.REDIS_URL = private_redis.url
    stored, reads = Stub(), []

    def refresh(current: Stub) -> Stub:
        reads.append(time.monotonic())
        return copy.copy(stored)

    async def scenario() -> tuple[int, list[str]]:
        watch = events.AsyncTurnWatch(
            turn=copy.copy(stored), refresh=refresh, timeout=60, tick=120, poll_if_down=True
        )
        await watch.start()
        private_redis.kill()
        assert await until(lambda: watch.subscription.lost)
        private_redis.start()
        following = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(3)  # subscribed again meanwhile: no more reads on a timer
        assert not following.done()
        settled = len(reads)
        await asyncio.sleep(1)
        quiet = len(reads) == settled
        stored.status, stored.updated_at = "completed", 1
        published(private_redis.url, stored.pk, "completed")
        seen = await asyncio.wait_for(following, 5)
        watch.close()
        return quiet, [seen.status]

    quiet, seen = asyncio.run(scenario())
    assert quiet and seen == ["completed"]


@pytest.fixture
def hanging_redis():
    """An address that takes connections and never answers: a Redis that hangs."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)  # never accepted: the handshake completes, nothing is ever read
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        server.close()


def test_a_waiter_asking_to_subscribe_again_keeps_polling_while_redis_hangs(
    settings, private_redis, hanging_redis, monkeypatch
):
    """Asked in the waiting thread, a subscription to a Redis that hangs held the poll for
    SUBSCRIBE_TIMEOUT_SECONDS and more: the turn's end seen seconds late, the deadline
    overrun, a client gone unnoticed."""
    from sessions_app.events import notify

    monkeypatch.setattr(notify, "RESUBSCRIBE_SECONDS", 0.3)
    settings.REDIS_URL = private_redis.url
    changes = events.turn_changes(turn_id=uuid.uuid4(), timeout=8, tick=120)
    assert next(changes) is None
    private_redis.kill()
    settings.REDIS_URL = hanging_redis  # comes back hanging
    started = time.monotonic()
    seen = [time.monotonic() for _ in changes]
    assert time.monotonic() - started < 9, "past its deadline"
    gaps = [later - earlier for earlier, later in itertools.pairwise([started, *seen])]
    assert max(gaps) < 1.5, max(gaps)


def test_an_async_watch_asking_to_subscribe_again_keeps_polling_while_redis_hangs(
    settings, private_redis, hanging_redis, monkeypatch
):
    from sessions_app.events import watch as watch_module

    monkeypatch.setattr(watch_module, "RESUBSCRIBE_SECONDS", 0.3)
    settings.REDIS_URL = private_redis.url
    reads: list[float] = []

    def refresh(current: Stub) -> Stub:
        reads.append(time.monotonic())
        return current

    async def scenario() -> None:
        watch = events.AsyncTurnWatch(turn=Stub(), refresh=refresh, timeout=8, tick=120)
        await watch.start()
        private_redis.kill()
        settings.REDIS_URL = hanging_redis
        assert await until(lambda: watch.subscription.lost)
        reads.clear()
        async for _ in watch:
            pass
        watch.close()

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert time.monotonic() - started < 9.5, "past its deadline"
    gaps = [later - earlier for earlier, later in itertools.pairwise(reads)]
    assert reads and max(gaps) < 1.5, max(gaps)


def test_a_pending_subscription_closed_while_its_lock_is_held_never_waits_for_it(
    settings, private_redis
):
    """A finalizer may close it on the loop's thread while the loop holds the entering's
    lock (answering it): waiting for that lock there would stop the listener for good."""
    from sessions_app.events.loop_thread import PendingSubscription

    settings.REDIS_URL = private_redis.url
    pending = PendingSubscription(uuid.uuid4())
    assert wait_until(lambda: pending.entering.done.is_set(), 10, interval=0.02)
    with pending.entering.lock:  # the loop answering, say
        closing = threading.Thread(target=pending.close)
        closing.start()
        closing.join(2)
        assert not closing.is_alive(), "close waited for the lock"
    closed = pending.entering.subscription
    assert wait_until(lambda: closed.closed, 10, interval=0.02)  # done from the loop


def test_an_async_watch_subscribed_again_reads_once_whatever_it_was_told(settings):
    """The renewed subscription may have heard a status the watch does not read (running)
    before the watch took it: the end that came while it polled must still be read."""
    stored, reads = Stub("pending"), []

    def refresh(current: Stub) -> Stub:
        reads.append(stored.status)
        return copy.copy(stored)

    async def scenario() -> list[str]:
        watch = events.AsyncTurnWatch(
            turn=copy.copy(stored), refresh=refresh, timeout=5, tick=120, unread={"running"}
        )
        await watch.start()
        renewed = await events.turn_listener().subscribe(stored.pk)
        renewed.status = "running"  # heard before the watch took it
        watch.subscription.lost = True  # lost meanwhile
        watch._resubscribing = asyncio.ensure_future(asyncio.sleep(0, result=renewed))
        watch._resubscribe_at = 0
        stored.status, stored.updated_at = "completed", 1  # ended while it polled
        seen = await asyncio.wait_for(anext(watch), 3)
        watch.close()
        renewed.close()
        return [seen.status]

    assert asyncio.run(scenario()) == ["completed"]
