from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from core import health
from core import views as core_views
from core.docs import docs_view
from sessions_app import views
from sessions_app.signin import SignInForm, admin_password_change, throttled_page

urlpatterns = [
    # The API first, its busiest routes first in its own list: Django tries the patterns in
    # order, and on every request, cold, each one tried costs (README, "What code run once
    # per request costs").
    path("api/v1/", include("sessions_app.urls")),
    # Any other address under the API prefix: the JSON 404, DEBUG or not.
    re_path(r"^api/v1(?:/|$)", core_views.api_not_found),
    path("", views.chat, name="chat"),
    # Both HTML sign-in pages answer 429 past the failed-sign-in limit (sessions_app.signin);
    # the admin's own login is overridden here, ahead of the rest of the admin.
    path(
        "accounts/login/",
        throttled_page(auth_views.LoginView.as_view(authentication_form=SignInForm)),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/login/", throttled_page(admin.site.login)),
    # Its old password is a guess too: counted with the sign-ins.
    path("admin/password_change/", throttled_page(admin.site.admin_view(admin_password_change))),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("favicon.ico", views.favicon),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    path(
        "api/docs/",
        docs_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="docs",
    ),
]

handler400 = "core.views.bad_request"
handler403 = "core.views.permission_denied"
handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
