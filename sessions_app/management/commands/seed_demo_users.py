"""Create the demo users if absent and print how to log in."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

DEMO_USERS = [
    ("alice", "alice-demo-pass", False),
    ("bob", "bob-demo-pass", False),
    ("staff", "staff-demo-pass", True),
]


class Command(BaseCommand):
    help = "Create demo users (alice, bob, staff) if they do not exist, and print their logins."

    def handle(self, *args, **options) -> None:
        User = get_user_model()
        for username, password, is_staff in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": is_staff, "is_superuser": is_staff}
            )
            if created:
                user.set_password(password)
                user.save()
            token, _ = Token.objects.get_or_create(user=user)
            state = "created" if created else "exists"
            self.stdout.write(
                f"  {username:6} password {password:16} API token {token.key}  ({state})"
            )
        self.stdout.write("Log in at http://127.0.0.1:8000/ (staff: /admin/).")
