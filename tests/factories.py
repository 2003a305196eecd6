import factory
from django.contrib.auth import get_user_model

from sessions_app.tokens import auth_token_issue


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests")

    @factory.post_generation
    def saved(self, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            self.save()  # the password was set after the first save


def token_for(user) -> str:
    """Issue ``user`` a new API token, as signing in does, and return its key."""
    key, _ = auth_token_issue(user=user)
    return key
