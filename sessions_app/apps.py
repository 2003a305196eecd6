from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import pre_delete, pre_save


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Chat sessions"

    def ready(self) -> None:
        import core.checks  # noqa: F401 - registers the deploy checks

        from .services import account_erase_on_delete
        from .tokens import auth_tokens_revoke_on_password_change

        pre_delete.connect(
            account_erase_on_delete,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="account_erase_on_delete",
        )

        pre_save.connect(
            auth_tokens_revoke_on_password_change,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="auth_tokens_revoke_on_password_change",
        )
