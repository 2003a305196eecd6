from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from sessions_app.tasks import turns_sweep


class Command(BaseCommand):
    help = "Re-queue or fail turns left pending or running too long (beat runs the same code)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=int,
            default=settings.STALE_TURN_SECONDS,
            help="Age in seconds past which a pending or running turn is stale.",
        )

    def handle(self, *args, older_than: int, **options) -> None:
        counts = turns_sweep(older_than_seconds=older_than)
        self.stdout.write(
            f"re-queued {counts['requeued']}, failed {counts['failed']},"
            f" removed {counts['discarded']} answered 503"
        )
