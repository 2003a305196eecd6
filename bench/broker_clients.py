"""CPU of the Redis broker's publish and of its delivery + late ack: kombu's own transport
against ``core.broker.Transport`` (one Redis client per channel), in one run, alternated.

    .venv/bin/python bench/broker_clients.py [--messages 3000] [--rounds 3] [--redis-db 12]

Each round publishes ``--messages`` task-sized JSON messages through each transport, then
consumes them with acknowledgements as a Celery worker with late acks does (the delivery
is recorded in the unacknowledged index, the ack removes it), and prints this process's CPU
per message (``time.process_time``: Redis's own work is not in it) and the Redis clients
the channel built. It flushes the Redis database it is given.
"""

import argparse
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import broker  # noqa: E402

QUEUE = "bench-broker"
BODY = {"turn_id": str(uuid.uuid4()), "attempt": 0, "padding": "x" * 200}


class Counted:
    """Stands in for a channel's ``Client`` class and counts the clients built through it."""

    def __init__(self, client_class: type) -> None:
        self.client_class, self.built = client_class, 0

    def __call__(self, **kwargs: object) -> Redis:
        self.built += 1
        return self.client_class(**kwargs)


@dataclass
class RoundTrip:
    received: list[dict]  # the bodies, in the order they came
    built: int  # Redis clients the channel built from the first publish on
    publish_cpu: float  # seconds of this process's CPU, all publishes
    consume_cpu: float  # all deliveries and their acks


def round_trip(url: str, transport: type, messages: int) -> RoundTrip:
    """Publish ``messages`` task-sized messages (``"n"``: 0, 1, ...) through ``transport``,
    then receive and acknowledge each, as a Celery worker with late acks does."""
    queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)
    with Connection(url, transport=transport) as conn:
        channel = conn.default_channel
        queue(channel).declare()
        counted = channel.Client = Counted(channel.Client)
        producer = conn.Producer(channel)
        started = time.process_time()
        for n in range(messages):
            producer.publish({**BODY, "n": n}, exchange=queue.exchange, routing_key=QUEUE)
        published = time.process_time() - started
        received: list[dict] = []

        def take(body: dict, message) -> None:
            received.append(body)
            message.ack()

        started = time.process_time()
        with conn.Consumer(queue, callbacks=[take], channel=channel):
            while len(received) < messages:
                conn.drain_events(timeout=5)
        consumed = time.process_time() - started
    return RoundTrip(received, counted.built, published, consumed)


def one_round(url: str, transport: type, messages: int) -> tuple[float, float, float]:
    """(µs of CPU per publish, per delivery + ack, clients built per message)."""
    trip = round_trip(url, transport, messages)
    per = 1e6 / messages
    return trip.publish_cpu * per, trip.consume_cpu * per, trip.built / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-db", type=int, default=12)
    args = parser.parse_args()
    url = f"redis://127.0.0.1:6379/{args.redis_db}"
    Redis.from_url(url).flushdb()
    transports = {"kombu's": kombu_redis.Transport, "core.broker": broker.Transport}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in transports}
    for _ in range(args.rounds):
        for name, transport in transports.items():
            figures[name].append(one_round(url, transport, args.messages))
    Redis.from_url(url).flushdb()
    print(f"{args.messages} messages x {args.rounds} rounds, alternated; medians, µs of CPU")
    print("| transport | publish | delivery + ack | Redis clients built per message |")
    print("| --- | --- | --- | --- |")
    for name, rows in figures.items():
        publish, consume, built = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"| {name} | {publish:.0f} | {consume:.0f} | {built:.2f} |")


if __name__ == "__main__":
    main()
