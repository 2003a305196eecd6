from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import pre_save


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Chat sessions"

    def ready(self) -> None:
        import core.checks  # noqa: F401 - registers the deploy checks

        from .tokens import auth_tokens_revoke_on_password_change

        pre_save.connect(
            auth_tokens_revoke_on_password_change,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="auth_tokens_revoke_on_password_change",
        )
