"""The pii_scan command: lines on stdin, scrubbed lines or JSON objects out."""

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

ROOT = Path(__file__).resolve().parent.parent.parent
LINES = "Mail anna@example.com or call (415) 555-0132\nanna@example.com again, bob@example.org\n"


def scan(text: str, *args: str) -> list[str]:
    out = StringIO()
    call_command("pii_scan", *args, stdin=StringIO(text), stdout=out)
    return out.getvalue().splitlines()


def test_pseudonymizes_by_default_numbering_across_the_run() -> None:
    assert scan(LINES) == [
        "Mail <EMAIL_ADDRESS_1> or call <PHONE_NUMBER_1>",
        "<EMAIL_ADDRESS_1> again, <EMAIL_ADDRESS_2>",
    ]


def test_redacts_on_request() -> None:
    assert scan(LINES, "--mode", "redact") == [
        "Mail [EMAIL_ADDRESS] or call [PHONE_NUMBER]",
        "[EMAIL_ADDRESS] again, [EMAIL_ADDRESS]",
    ]


def test_json_gives_offsets_into_the_input_line() -> None:
    first = json.loads(scan(LINES, "--json")[0])
    line = LINES.splitlines()[0]
    assert first["text"] == "Mail <EMAIL_ADDRESS_1> or call <PHONE_NUMBER_1>"
    assert [line[e["start"] : e["end"]] for e in first["entities"]] == [
        "anna@example.com",
        "(415) 555-0132",
    ]
    assert [e["type"] for e in first["entities"]] == ["EMAIL_ADDRESS", "PHONE_NUMBER"]
    assert set(first["entities"][0]) == {"type", "start", "end"}


def test_json_lists_the_runs_values_found_again_without_their_cue() -> None:
    """The second line's name is replaced because the run's vault holds it: listed too."""
    second = json.loads(scan("My name is Kate Bush.\nKate Bush lives at home\n", "--json")[1])
    assert second["text"] == "<PERSON_1> lives at home"
    assert second["entities"] == [{"type": "PERSON", "start": 0, "end": 9}]


def test_lines_without_pii_pass_unchanged() -> None:
    assert scan("What is my order status?\n\n") == ["What is my order status?", ""]
    assert json.loads(scan("hello\n", "--json")[0]) == {"text": "hello", "entities": []}


def test_national_phone_numbers_are_those_of_the_services_regions(settings) -> None:
    """It read every national number with detect's own wider list, whatever
    PII_PHONE_REGIONS said: the scan found what the service leaves, and missed what it takes."""
    korean, brazilian = "call me on 010-2000-0000", "call me on (11) 96123-4567"
    assert settings.PII_PHONE_REGIONS == ["US", "GB", "DE", "FR", "IN"]
    assert scan(f"{korean}\n{brazilian}\n", "--mode", "redact") == [korean, brazilian]
    settings.PII_PHONE_REGIONS = ["KR", "BR"]
    assert scan(f"{korean}\n{brazilian}\n", "--mode", "redact") == [
        "call me on [PHONE_NUMBER]",
        "call me on [PHONE_NUMBER]",
    ]


def test_rejects_an_unknown_mode() -> None:
    with pytest.raises(CommandError):
        scan(LINES, "--mode", "loud")


def test_runs_as_a_real_command_on_stdin() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "pii_scan", "--mode", "redact"],
        input="Hi, my name is Priya Sharma, SSN 123-45-6789\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=True,
    )
    assert result.stdout == "Hi, my name is [PERSON], SSN [US_SSN]\n"
