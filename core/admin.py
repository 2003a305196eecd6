"""What the site's admin pages share."""

from django.db.models import Model
from django.http import HttpRequest


class ViewOnlyAdmin:
    """A model admin (or inline) whose rows staff may view, never add, change or delete.

    Rows that only the service writes: a Save would write back a whole row as the page
    read it, over what the service changed meanwhile, and a delete here would skip what the
    service does around one (erasure elsewhere, the audit log's chain).
    """

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
