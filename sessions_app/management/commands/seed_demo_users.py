"""Create the demo users if absent and print how to log in (development only)."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sessions_app.tokens import auth_token_issue

DEMO_USERS = (
    ("alice", "alice-demo-pass", False),
    ("bob", "bob-demo-pass", False),
    ("staff", "staff-demo-pass", True),
)


class Command(BaseCommand):
    help = (
        "Create demo users (alice, bob, staff) if they do not exist, and print their logins "
        "and a new API token for each. Runs only with DEBUG on."
    )

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            # The passwords are public and staff is a superuser: never on a real deployment.
            raise CommandError(
                "seed_demo_users creates a superuser with a published password; it runs only "
                "with DEBUG on (as under `make run`)."
            )
        User = get_user_model()
        for username, password, is_staff in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": is_staff, "is_superuser": is_staff}
            )
            if created:
                user.set_password(password)
                user.save()
            # Tokens are stored only as hashes: a fresh one is the only one that can be shown.
            key, _ = auth_token_issue(user=user)
            state = "created" if created else "exists"
            self.stdout.write(f"  {username:6} password {password:16} API token {key}  ({state})")
        self.stdout.write("Log in at http://127.0.0.1:8000/ (staff: /admin/).")
