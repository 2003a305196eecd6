"""The review console: flagged entries first, why each was flagged, and the two decisions.

Nothing here edits or deletes an entry; the only writes are review decisions (each
recorded, with reviewer and time, as a ``review`` entry) and the audit of each read of
withheld text.
"""

import uuid

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, QuerySet, Value, When
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from core.admin import ViewOnlyAdmin

from . import review, selectors, services
from .holds import HELD_REASON, held_reply
from .models import AuditEntry

REVIEW_PERMISSION = "audit_app.change_auditentry"
WITHHELD_PERMISSION = "audit_app.view_withheld_text"


def _introducer(posting: dict) -> tuple[str, int, str]:
    """A link to the entries of the user (and session) that introduced a feature."""
    user, session = posting["user_id"], posting["session_id"]
    if session is None:  # the index keeps one record for several of the user's sessions
        return _entries_url(user=user), user, "several sessions"
    return _entries_url(user=user, session_id=session), user, f"session {session}"


def _entries_url(**params: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"{reverse('admin:audit_app_auditentry_changelist')}?{query}"


@admin.register(AuditEntry)
class AuditEntryAdmin(ViewOnlyAdmin, admin.ModelAdmin):
    # Append-only: view and review (its own actions and pages), never add, change or delete.

    list_display = [
        "created_at",
        "kind",
        "user_id",
        "username",
        "session_id",
        "role",
        "count",
        "flagged",
        "review_state",
        "reason",
    ]
    list_filter = [
        "flagged",
        "review_state",
        "kind",
        ("created_at", admin.DateFieldListFilter),
        ("user", admin.RelatedOnlyFieldListFilter),
    ]
    search_help_text = "A session id, or a username."
    search_fields = ["user__username"]
    # Open flags on top, then the decided ones, then everything else, newest first in each
    # (the review states' names do not sort that way).
    ordering = [
        Case(
            When(flagged=True, review_state=AuditEntry.ReviewState.OPEN, then=Value(0)),
            When(flagged=True, then=Value(1)),
            default=Value(2),
        ).asc(),
        "-created_at",
        "-id",
    ]
    list_select_related = ["user"]
    actions = ["confirm_leak", "mark_false_positive", "release_reply", "release_held"]
    readonly_fields = ["evidence_display"]
    change_form_template = "admin/audit_app/auditentry/change_form.html"

    @admin.display(description="username")
    def username(self, entry: AuditEntry) -> str:
        return entry.user.get_username() if entry.user else "-"

    def get_fields(self, request: HttpRequest, obj: AuditEntry | None = None) -> list[str]:
        return [f.name for f in AuditEntry._meta.fields if f.name != "evidence"] + [
            "evidence_display"
        ]

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str):
        try:
            return queryset.filter(session_id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REVIEW_PERMISSION)

    @admin.display(description="evidence")
    def evidence_display(self, entry: AuditEntry) -> str:
        items = (entry.evidence or {}).get("items", [])
        if not items:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}-{}</td><td>{}%</td><td>{}</td></tr>",
            (
                (item["start"], item["end"], item["weight_pct"], self._introducers(item))
                for item in items
            ),
        )
        head = "<tr><th>characters</th><th>weight</th><th>introduced by</th></tr>"
        return format_html("<table>{}{}</table>", mark_safe(head), rows)  # noqa: S308

    def _introducers(self, item: dict) -> str:
        return format_html_join(
            ", ", '<a href="{}">user {} / {}</a>', map(_introducer, item["introduced_by"])
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        count = selectors.audit_open_flag_count()
        title = f"Audit entries: {count} open flag{'s' if count != 1 else ''}"
        return super().changelist_view(request, {"title": title, **(extra_context or {})})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {
            "can_review": self.has_review_permission(request),
            "can_read_withheld": request.user.has_perm(WITHHELD_PERMISSION),
            "held_reason": HELD_REASON,
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self):
        own = [
            path(
                "<int:entry_id>/review/<str:decision>/",
                self.admin_site.admin_view(self.review_view),
                name="audit_app_auditentry_review",
            ),
            path(
                "<int:entry_id>/withheld/",
                self.admin_site.admin_view(self.withheld_view),
                name="audit_app_auditentry_withheld",
            ),
        ]
        return own + super().get_urls()

    @admin.action(description="Confirm leak", permissions=["review"])
    def confirm_leak(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._decide(request, queryset, leak=True)

    @admin.action(description="Mark false positive", permissions=["review"])
    def mark_false_positive(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._decide(request, queryset, leak=False)

    @admin.action(
        description="Mark false positive and release the reply to its user",
        permissions=["review"],
    )
    def release_reply(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._decide(request, queryset, leak=False, release=True)

    @admin.action(
        description="Release withheld replies found harmless (user not held)",
        permissions=["review"],
    )
    def release_held(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Deliver the selection's withheld replies found harmless, of users no longer held
        (``review.harmless_release``)."""
        released, still_held, refused = review.harmless_release(
            queryset.values_list("pk", flat=True), reviewer_id=request.user.pk
        )
        notice = f"{released} withheld replies released"
        if still_held:
            notice += (
                f"; {still_held} left withheld: their user is still held (review the user's"
                " open flags first)"
            )
        if refused:
            notice += (
                f"; {len(refused)} left withheld: {review.refusers(refused)} did not answer,"
                " try again"
            )
        level = messages.WARNING if refused else messages.SUCCESS
        self.message_user(request, f"{notice}.", level)

    def _decide(
        self, request: HttpRequest, queryset: QuerySet, *, leak: bool, release: bool = False
    ) -> None:
        # Open flags only: a selection swept up with "select all" must not overturn a decision
        # already taken (an entry's own page can still change it, one at a time).
        # (Whether it is open is checked again under the entry's lock.)
        flagged = list(queryset.filter(flagged=True).values_list("pk", flat=True))
        outcomes = [
            review.review_decide(
                entry_id=entry_id,
                reviewer_id=request.user.pk,
                leak=leak,
                release=release,
                open_only=True,
            )
            for entry_id in flagged
        ]
        taken = sum(1 for outcome in outcomes if outcome)
        left = len(flagged) - taken
        rest = f"; {left} already decided, left as they were" if left else ""
        if kept := outcomes.count(review.KEPT_HELD):
            rest += f"; {kept} {review.KEPT_NOTE}"
        refused = [outcome for outcome in outcomes if outcome in review.NOT_RELEASED]
        if refused:
            rest += f"; {len(refused)} {review.not_released_note(refused)}"
        level = messages.WARNING if refused else messages.SUCCESS
        self.message_user(request, f"{taken} open flags reviewed{rest}.", level)

    def review_view(self, request: HttpRequest, entry_id: int, decision: str) -> HttpResponse:
        return _review(self, request, entry_id=entry_id, decision=decision)

    def withheld_view(self, request: HttpRequest, entry_id: int) -> HttpResponse:
        """GET: say that reading is recorded, and offer the read as a POST. POST: record the
        read and show the text. A GET must be safe: a link followed by a browser's prefetch,
        a crawler or a shared URL would otherwise write an audit entry in the reader's name."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        if not request.user.has_perm(WITHHELD_PERMISSION):
            raise PermissionDenied
        entry = get_object_or_404(AuditEntry, pk=entry_id)
        if not (entry.flagged or held_reply(entry)):
            raise Http404("no withheld reply behind this entry")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Withheld reply of entry {entry.pk}",
            "entry": entry,
            "opts": self.opts,
        }
        if request.method == "GET":
            template = "admin/audit_app/auditentry/withheld_confirm.html"
            return TemplateResponse(request, template, context)
        text = selectors.withheld_text_for(entry)
        if text is not None:
            services.audit_withheld_text_read(entry_id=entry.pk, reader_id=request.user.pk)
        context["segments"] = _segments(text, entry.evidence) if text is not None else None
        return TemplateResponse(request, "admin/audit_app/auditentry/withheld.html", context)


def _review(model_admin: AuditEntryAdmin, request, *, entry_id: int, decision: str):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    decisions = ("leak", "false_positive", "release")
    if not model_admin.has_review_permission(request) or decision not in decisions:
        raise PermissionDenied
    get_object_or_404(AuditEntry, pk=entry_id, flagged=True)
    # The state the page showed: decided meanwhile by someone else (a confirmed leak, say),
    # the entry is not overturned by a page opened before, which would release the reply.
    seen = request.POST.get("seen")
    outcome = seen in AuditEntry.ReviewState.values and review.review_decide(
        entry_id=entry_id,
        reviewer_id=request.user.pk,
        leak=decision == "leak",
        release=decision == "release",
        seen=seen,
    )
    if outcome == review.KEPT_HELD:
        notice = (
            f"Entry {entry_id} reviewed; its reply stays withheld while its user is held: "
            'release it with "Release withheld replies found harmless" once the hold has lifted.'
        )
        model_admin.message_user(request, notice, messages.WARNING)
    elif outcome in review.NOT_RELEASED:
        notice = (
            f"Entry {entry_id} reviewed; its reply stays withheld, as "
            f"{review.refusers([outcome])} did not answer: release it with "
            '"Release withheld replies found harmless" once it does.'
        )
        model_admin.message_user(request, notice, messages.WARNING)
    elif outcome:
        model_admin.message_user(request, f"Entry {entry_id} reviewed.", messages.SUCCESS)
    else:
        notice = f"Entry {entry_id} was decided meanwhile: nothing changed. Review it again."
        model_admin.message_user(request, notice, messages.WARNING)
    return HttpResponseRedirect(reverse("admin:audit_app_auditentry_change", args=[entry_id]))


def _segments(text: str, evidence: dict) -> list[tuple[str, bool]]:
    """Split ``text`` into (piece, matched) runs, so the template can mark the matches."""
    spans = sorted((item["start"], item["end"]) for item in (evidence or {}).get("items", []))
    segments, at = [], 0
    for start, end in spans:
        start = max(start, at)
        if start < end:
            segments += [(text[at:start], False), (text[start:end], True)]
            at = end
    return segments + [(text[at:], False)]


def _index_with_open_flags(site: admin.AdminSite) -> None:
    """Show the number of open flags beside "Audit entries" on the admin index."""
    app_list = site.get_app_list

    def get_app_list(request: HttpRequest, app_label: str | None = None) -> list[dict]:
        apps = app_list(request, app_label)
        for model in (m for app in apps for m in app["models"]):
            if model.get("model") is AuditEntry:
                count = selectors.audit_open_flag_count()
                model["name"] = f"{model['name']} ({count} open flag{'s' if count != 1 else ''})"
        return apps

    site.get_app_list = get_app_list


_index_with_open_flags(admin.site)
