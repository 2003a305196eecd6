from django.core.management.base import BaseCommand

from sessions_app.services import chat_session_purge_expired


class Command(BaseCommand):
    help = "Erase expired sessions and everything in them (beat also runs it)."

    def handle(self, *args, **options) -> None:
        self.stdout.write(f"erased {chat_session_purge_expired()} expired sessions")
