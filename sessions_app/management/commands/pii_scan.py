import json
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from sessions_app.pii import pseudonymize_spans, redact_spans, spans_to_scrub, with_known_values


class Command(BaseCommand):
    help = (
        "Read text lines on stdin and write each one with its personal data scrubbed; with "
        '--json, one {"text", "entities"} object a line (offsets into the input line).'
    )
    # call_command(..., stdin=...) hands the lines in tests.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--mode",
            choices=("redact", "pseudonymize"),
            default="pseudonymize",
            help="redact: [TYPE]; pseudonymize (default): <TYPE_N>, numbered across the run",
        )
        parser.add_argument("--json", action="store_true", help="one JSON object a line")

    def handle(self, *args, **options) -> None:
        stdin = options.get("stdin") or sys.stdin
        vault: dict[str, str] = {}  # one vault for the whole run, as for one session
        for raw in stdin:
            line = raw.rstrip("\r\n")
            # What the service would scrub: its regions (PII_PHONE_REGIONS), not detect's
            # wider default, and placeholders already in the text left as they are.
            spans = spans_to_scrub(line, regions=settings.PII_PHONE_REGIONS)
            if options["mode"] == "redact":
                text = redact_spans(line, spans)
            else:
                # The run's values found again without their cue are replaced too: listed.
                spans = with_known_values(line, spans, vault)
                text, new = pseudonymize_spans(line, spans, vault=vault)
                vault.update(new)
            if options["json"]:
                entities = [{"type": s.type, "start": s.start, "end": s.end} for s in spans]
                text = json.dumps({"text": text, "entities": entities}, ensure_ascii=False)
            self.stdout.write(text)
