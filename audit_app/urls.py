from django.urls import path

from . import apis

urlpatterns = [
    path("entries/", apis.AuditEntryListApi.as_view(), name="audit-entry-list"),
]
