"""Periodic work of the audit trail."""

from celery import shared_task

from . import services


@shared_task(ignore_result=True)
def seal_audit_chain() -> int:
    """Seal the entries written since the last run into the hash chain (idempotent)."""
    return services.audit_chain_seal()
