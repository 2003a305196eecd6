from django.urls import include, path

from . import apis

# A chat turn's routes first (its post, its polls, its events): Django tries them in order.
urlpatterns = [
    path(
        "sessions/<str:session_id>/messages/",
        apis.MessageListCreateApi.as_view(),
        name="message-list",
    ),
    path("turns/<str:turn_id>/", apis.TurnDetailApi.as_view(), name="turn-detail"),
    path("turns/<str:turn_id>/events/", apis.TurnEventsApi.as_view(), name="turn-events"),
    path("auth/token/", apis.AuthTokenApi.as_view(), name="auth-token"),
    path("sessions/", apis.SessionListCreateApi.as_view(), name="session-list"),
    path("sessions/<str:session_id>/", apis.SessionDetailApi.as_view(), name="session-detail"),
    path("stateless/chat/", apis.StatelessChatApi.as_view(), name="stateless-chat"),
    path("audit/", include("audit_app.urls")),
]
