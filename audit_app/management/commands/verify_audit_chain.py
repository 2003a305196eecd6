"""``manage.py verify_audit_chain``: check the audit log's hash chain and review decisions
(exit 1 if broken)."""

import sys

from django.core.management.base import BaseCommand

from audit_app.chain import Broken
from audit_app.selectors import audit_chain_verify
from audit_app.services import audit_chain_seal


class Command(BaseCommand):
    help = (
        "Check the audit log's hash chain and each review decision against it; exit 1 and "
        "name the first broken entry."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--seal", action="store_true", help="seal the entries awaiting sealing first"
        )

    def handle(self, *args, **options) -> None:
        if options["seal"]:
            audit_chain_seal()
        report = audit_chain_verify()
        verdict = report.verdict
        if verdict.broken is not None:
            broken = verdict.broken
            self.stderr.write(
                f"BROKEN at chain_seq {broken.chain_seq} (entry id {broken.entry_id}): "
                f"{broken.problem}; {verdict.sealed} entries verified before it"
            )
            sys.exit(1)
        if report.review is not None:
            self._review_broken(report.review)
        sealed = f"{verdict.sealed} {'entry' if verdict.sealed == 1 else 'entries'} sealed"
        if report.oldest_unsealed_age is None:
            self.stdout.write(f"ok, {sealed}, nothing unsealed")
            return
        self.stdout.write(
            f"ok, {sealed}, {report.unsealed} awaiting sealing, "
            f"oldest unsealed age {report.oldest_unsealed_age:.0f}s"
        )

    def _review_broken(self, broken: Broken) -> None:
        # "at", not "of": the entry named is the decided one, or a review entry no decision
        # wrote (the problem says which).
        where = "unsealed" if broken.chain_seq is None else f"chain_seq {broken.chain_seq}"
        self.stderr.write(
            f"BROKEN review at entry id {broken.entry_id} ({where}): {broken.problem}"
        )
        sys.exit(1)
