"""The chat page in a real browser: Debian's Chromium driven by Playwright, against gunicorn,
a Celery worker and the fake Claude, each user signed in through the real login page.

Chromium comes from ``apt-get install -y chromium`` (``.ci/run`` installs it); a browser is
never downloaded. Screenshots of the main states go to the test's ``tmp_path``.
"""

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from audit_app.models import AuditEntry
from sessions_app import services, tasks
from sessions_app.models import ChatSession, Turn
from sessions_app.services import SUPPRESSED_NOTICE, chat_session_create

from ..factories import UserFactory
from ..fakes.claude import FakeClaude

pytestmark = pytest.mark.worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "pw-for-tests"  # UserFactory's
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "chat.png"
# A small retry budget, so a failed turn fails in well under a second.
BUDGET = {"TURN_MAX_ATTEMPTS": "2", "CLAUDE_MAX_RETRIES": "1", "TURN_RETRY_DELAY_SECONDS": "0.1"}
CALLS_PER_TURN = 2 * (1 + 1)
PHONE = {"width": 390, "height": 844}

ALICE_SECRET, BOB_SECRET = "Zorblax-4417", "Quenthrip-8862"
CODENAME = "Remember my codename: Vexmoria Quintaplex, and my order 48291-XK7."
LEAK = "Your codename is Vexmoria Quintaplex and your order is 48291-XK7."


def _said(body: dict) -> list[str]:
    """The user's messages in a Messages API request, oldest first."""
    texts = []
    for message in body["messages"]:
        content = message["content"]
        if not isinstance(content, str):
            content = "".join(block.get("text", "") for block in content)
        if message["role"] == "user":
            texts.append(content)
    return texts


def remembering(body: dict) -> str:
    """A model that knows only the conversation it is sent, and hands out what is asked.

    Asked for a codename, it answers with the one a user told it once (from its "memory",
    that is, another user's conversation): the reply the leak scan must catch.
    """
    said = _said(body)
    if "What is my secret" in said[-1]:
        told = [m.group(1) for m in (re.search(r"my secret is (\S+)", s) for s in said) if m]
        return f"Your secret is {told[-1]}" if told else "You have not told me a secret."
    if "codename" in said[-1] and "Remember" not in said[-1]:
        return LEAK
    return "Noted."


# Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    # Playwright's sync API keeps an event loop in this thread, so Django would refuse the
    # test's own ORM calls as async-unsafe; they are plain synchronous code between browser
    # steps. Allowed for this module only.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            expect.set_options(timeout=20_000)
            yield launched
            launched.close()


@pytest.fixture
def site(web_server, workers, fake_claude: FakeClaude) -> str:
    """gunicorn and a Celery worker on the test's database, Redis and fake Claude."""
    fake_claude.set_responder(remembering)
    worker = workers(pool="threads", concurrency=4, env=BUDGET)
    # tests.settings: it knows the test users' fast password hash, and WhiteNoise serves the
    # static files where they lie (the suite does not run collectstatic).
    server = web_server(
        workers=1, threads=16, env={"DJANGO_SETTINGS_MODULE": "tests.settings", **BUDGET}
    )
    worker.wait_ready()
    return server.url


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    """New browser contexts (each its own cookie jar: one user each); all closed after."""
    opened: list[BrowserContext] = []
    yield opened
    for context in opened:
        context.close()


@pytest.fixture
def open_context(browser: Browser, contexts: list[BrowserContext]):
    def open_one(**options) -> BrowserContext:
        context = browser.new_context(**options)
        contexts.append(context)
        return context

    return open_one


# Helpers --------------------------------------------------------------------------------------


def watched_page(context: BrowserContext) -> Page:
    """A new page that keeps the Content Security Policy violations its console reports."""
    page = context.new_page()
    violations: list[str] = []
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Security Policy" in msg.text else 0
    )
    page.csp_violations = violations
    return page


def sign_in(context: BrowserContext, url: str, username: str) -> Page:
    """Open the chat, get sent to the login page, log in there; return the chat page."""
    page = watched_page(context)
    page.goto(f"{url}/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()
    # The page is drawn before its deferred script has run; keys pressed before that are
    # the browser's own (Enter types a new line): wait until the script has wired them.
    page.wait_for_load_state("load")
    return page


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message")
    box.fill(text)
    box.press("Enter")


def replies(page: Page):
    return page.locator("#log .msg.assistant .text")


def assert_no_csp_violations(*pages: Page) -> None:
    for page in pages:
        assert page.csp_violations == [], page.csp_violations


# Tests ----------------------------------------------------------------------------------------


def test_two_users_at_once_each_see_only_their_own_conversation(
    site, open_context, fake_claude, tmp_path
):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    alice_page = sign_in(open_context(), site, "alice")
    bob_page = sign_in(open_context(viewport=PHONE), site, "bob")  # phone width
    alice_page.screenshot(path=tmp_path / "empty-chat.png")

    # Both tell a secret at the same time; the slow model shows the pending state.
    fake_claude.delay(1.5, times=2)
    send(alice_page, f"Hello! my secret is {ALICE_SECRET}")
    send(bob_page, f"Hi, my secret is {BOB_SECRET}")
    for page in (alice_page, bob_page):
        expect(page.locator("#pending")).to_be_visible()
        expect(page.get_by_label("Message")).to_have_value("")
    alice_page.screenshot(path=tmp_path / "pending.png")
    for page in (alice_page, bob_page):
        expect(replies(page)).to_have_text(["Noted."])
        expect(page.locator("#pending")).to_be_hidden()

    send(alice_page, "What is my secret?")
    send(bob_page, "What is my secret?")
    expect(replies(alice_page).last).to_have_text(f"Your secret is {ALICE_SECRET}")
    expect(replies(bob_page).last).to_have_text(f"Your secret is {BOB_SECRET}")
    assert BOB_SECRET not in alice_page.content() and ALICE_SECRET not in bob_page.content()
    # The new reply was announced to screen readers.
    expect(alice_page.locator("[aria-live]")).to_contain_text(ALICE_SECRET)
    # The sidebar: the chat, titled, with its messages counted.
    chats = alice_page.locator("#sessions button")
    expect(chats).to_have_count(1)
    expect(chats).to_contain_text(re.compile(r"Chat of .*4 messages"))
    alice_page.screenshot(path=tmp_path / "alice.png")
    bob_page.screenshot(path=tmp_path / "bob-phone.png", full_page=True)
    if not DOCS_SCREENSHOT.exists() or os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "alice.png", DOCS_SCREENSHOT)
    # Claude was never sent one user's secret in the other's conversation.
    assert not [r for r in fake_claude.requests if ALICE_SECRET in str(r) and BOB_SECRET in str(r)]

    # A model that hands Alice's codename to Bob: the reply is withheld, visibly marked.
    send(alice_page, CODENAME)
    expect(replies(alice_page).last).to_have_text("Noted.")
    send(bob_page, "What is my codename?")
    withheld = bob_page.locator("#log .msg.assistant.suppressed")
    expect(withheld.locator(".text")).to_have_text(SUPPRESSED_NOTICE)
    expect(withheld.locator(".badge")).to_have_text("Withheld for review")
    assert "Vexmoria" not in bob_page.content() and "48291" not in bob_page.content()
    bob_page.screenshot(path=tmp_path / "suppressed.png", full_page=True)

    # A reload keeps the history (and the open chat), the withheld reply marked as before.
    for page in (alice_page, bob_page):
        page.reload()
    expect(alice_page.locator("#log .msg.user .text")).to_have_text(
        [f"Hello! my secret is {ALICE_SECRET}", "What is my secret?", CODENAME]
    )
    expect(replies(alice_page)).to_have_text(["Noted.", f"Your secret is {ALICE_SECRET}", "Noted."])
    expect(bob_page.locator("#log .msg.assistant.suppressed .badge")).to_be_visible()

    # A reviewer confirms the leak in the admin.
    staff = UserFactory(username="reviewer", is_staff=True)
    for codename in ("view_auditentry", "change_auditentry"):
        staff.user_permissions.add(Permission.objects.get(codename=codename))
    admin = watched_page(open_context())
    admin.goto(f"{site}/admin/login/?next=/admin/audit_app/auditentry/")
    admin.locator("#id_username").fill("reviewer")
    admin.locator("#id_password").fill(PASSWORD)
    admin.get_by_role("button", name="Log in").click()
    expect(admin.get_by_text("Audit entries: 1 open flag")).to_be_visible()
    admin.locator("#result_list tbody tr").first.locator("th a").click()
    expect(admin.get_by_text("introduced by")).to_be_visible()
    admin.get_by_role("button", name="Confirm leak").click()
    expect(admin.locator(".messagelist")).to_contain_text("reviewed")
    admin.screenshot(path=tmp_path / "admin-review.png", full_page=True)
    entry = AuditEntry.objects.get(flagged=True)
    assert entry.review_state == "confirmed" and entry.reviewed_by == staff
    # The API's browsable documentation works under its policy too, an operation opened.
    admin.goto(f"{site}/api/docs/")
    expect(admin.locator(".swagger-ui .info .title")).to_contain_text("Isolation chat API")
    admin.locator(".opblock-summary").first.click()
    expect(admin.locator(".opblock-body").first).to_be_visible()
    assert_no_csp_violations(admin)

    # Deleting asks first; Cancel keeps the chat, Delete erases it.
    alice_page.get_by_role("button", name="Delete chat").click()
    expect(alice_page.get_by_role("dialog")).to_be_visible()
    alice_page.get_by_role("button", name="Cancel").click()
    expect(chats).to_have_count(1)
    alice_page.get_by_role("button", name="Delete chat").click()
    alice_page.get_by_role("button", name="Delete", exact=True).click()
    expect(alice_page.get_by_text("No chats yet.")).to_be_visible()
    expect(alice_page.locator("#log .msg")).to_have_count(0)
    assert not ChatSession.objects.filter(owner=alice).exists()
    assert ChatSession.objects.filter(owner=bob).count() == 1
    assert_no_csp_violations(alice_page, bob_page)


def test_failure_states_say_what_to_do_and_recover(site, open_context, fake_claude, tmp_path):
    user = UserFactory(username="carol")
    context = open_context()
    page = sign_in(context, site, "carol")

    # Claude fails past the retry budget: the error, and Retry sends the message again.
    fake_claude.fail(500, times=CALLS_PER_TURN)
    send(page, "Hello there")
    failed = page.locator("#log .msg.failed")
    expect(failed).to_contain_text("HTTP 500")
    page.screenshot(path=tmp_path / "failed.png")
    failed.get_by_role("button", name="Retry").click()
    expect(failed).to_have_count(0)
    expect(replies(page)).to_have_text(["Noted."])
    expect(page.locator("#log .msg.user .text")).to_have_text(["Hello there", "Hello there"])

    # A second message while the first is answered: 409, and what to do.
    fake_claude.delay(2.0)
    send(page, "One")
    expect(page.locator("#pending")).to_be_visible()
    send(page, "Two")
    expect(page.get_by_role("alert")).to_contain_text("still answering your previous message")
    expect(page.get_by_label("Message")).to_have_value("Two")
    expect(replies(page)).to_have_count(2)

    # The connection drops: said, then recovered by itself.
    context.set_offline(True)
    expect(page.get_by_role("alert")).to_contain_text("Connection lost")
    context.set_offline(False)
    expect(page.get_by_role("alert")).to_be_hidden()

    # The chat expires: said, with a new chat offered; the typed text is kept.
    ChatSession.objects.filter(owner=user).update(expires_at=timezone.now())
    send(page, "Are you still there?")
    expect(page.get_by_role("alert")).to_contain_text("expired")
    page.screenshot(path=tmp_path / "expired.png")
    page.get_by_role("button", name="Start a new chat").click()
    expect(page.get_by_label("Message")).to_have_value("Are you still there?")
    expect(page.get_by_label("Message")).to_be_focused()
    page.keyboard.press("Enter")
    expect(replies(page)).to_have_text(["Noted."])
    assert_no_csp_violations(page)


def test_the_address_names_the_open_chat_and_back_forward_and_edits_switch_it(site, open_context):
    UserFactory(username="dave")
    page = sign_in(open_context(), site, "dave")
    said = page.locator("#log .msg.user .text")
    opened = page.locator("#sessions button[aria-current]")

    send(page, "In the first chat")
    expect(replies(page)).to_have_text(["Noted."])
    first = page.url.split("#", 1)[1]
    page.get_by_role("button", name="New chat").click()
    send(page, "In the second chat")
    expect(replies(page)).to_have_text(["Noted."])
    second = page.url.split("#", 1)[1]
    assert first and second and first != second
    page.evaluate("window.notReloaded = true")  # each switch below stays in this document

    page.go_back()  # to the chat open before "New chat"
    expect(said).to_have_text(["In the first chat"])
    expect(opened).to_have_attribute("data-session", first)
    page.go_forward()
    expect(said).to_have_text(["In the second chat"])
    expect(opened).to_have_attribute("data-session", second)

    # The hash edited by hand (as in the address bar): that chat, then a new one.
    page.evaluate("id => { window.location.hash = id; }", first)
    expect(said).to_have_text(["In the first chat"])
    page.evaluate("() => { window.location.hash = ''; }")
    expect(page.get_by_role("heading", name="New chat")).to_be_visible()
    expect(page.locator("#log .msg")).to_have_count(0)
    # A chat that is not (or no longer) the user's: said, as on opening the page with it.
    page.evaluate("() => { window.location.hash = '00000000-0000-4000-8000-000000000000'; }")
    expect(page.get_by_role("alert")).to_contain_text("expired or was deleted")
    assert page.evaluate("window.notReloaded") is True
    assert_no_csp_violations(page)


def page_waits_until(page: Page, predicate, timeout: float = 20) -> None:
    """Wait for ``predicate`` while the page's events (route handlers among them) are served.

    Playwright's sync API runs a route handler only inside a Playwright call; a plain sleep
    would hold the request the test waits for.
    """
    for _ in range(int(timeout * 10)):
        if predicate():
            return
        page.wait_for_timeout(100)
    assert predicate(), "not before the timeout"


def hold(page: Page, pattern: str, method: str = "POST") -> list:
    """Hold the page's next ``method`` request to ``pattern`` until the test continues it."""
    held: list = []

    def keep(route) -> None:
        if route.request.method == method and not held:
            held.append(route)
        else:
            route.continue_()

    page.route(pattern, keep)
    return held


def test_an_answer_for_a_chat_left_meanwhile_stays_in_that_chat(site, open_context, fake_claude):
    erin = UserFactory(username="erin")
    page = sign_in(open_context(), site, "erin")
    said = page.locator("#log .msg.user .text")
    send(page, "In the first chat")
    expect(replies(page)).to_have_text(["Noted."])
    page.get_by_role("button", name="New chat").click()
    send(page, "In the second chat")
    expect(replies(page)).to_have_text(["Noted."])
    first, second = (
        str(s.id) for s in ChatSession.objects.filter(owner=erin).order_by("created_at")
    )

    # A message to the first chat, accepted once the second is open, and answered later.
    page.locator(f'#sessions button[data-session="{first}"]').click()
    expect(said).to_have_text(["In the first chat"])
    held = hold(page, "**/api/v1/sessions/*/messages/")
    send(page, "Still about the first")
    page_waits_until(page, lambda: held)
    page.locator(f'#sessions button[data-session="{second}"]').click()
    expect(said).to_have_text(["In the second chat"])
    fake_claude.delay(1.5)
    held[0].continue_()
    expect(page.locator("#live")).to_contain_text("sent to the chat you left")
    page_waits_until(page, lambda: not Turn.objects.exclude(status="completed").exists())
    page.wait_for_timeout(1000)  # time for a notification of its end to reach the page
    expect(said).to_have_text(["In the second chat"])
    expect(replies(page)).to_have_text(["Noted."])
    expect(page.locator("#pending")).to_be_hidden()
    page.unroute("**/api/v1/sessions/*/messages/")

    # Back in the first chat, the message and its answer are there.
    page.locator(f'#sessions button[data-session="{first}"]').click()
    expect(said).to_have_text(["In the first chat", "Still about the first"])
    expect(replies(page)).to_have_text(["Noted.", "Noted."])

    # The open chat reopened (its own button clicked) while a message is in flight: the
    # message and its answer still show there.
    held = hold(page, "**/api/v1/sessions/*/messages/")
    send(page, "Third for the first")
    page_waits_until(page, lambda: held)
    with page.expect_response(lambda r: "/messages/?page=1" in r.url):
        page.locator(f'#sessions button[data-session="{first}"]').click()
    expect(said).to_have_count(2)
    page.evaluate("() => { document.getElementById('live').textContent = ''; }")
    held[0].continue_()
    expect(said).to_have_text(["In the first chat", "Still about the first", "Third for the first"])
    expect(replies(page)).to_have_text(["Noted.", "Noted.", "Noted."])
    expect(page.locator("#live")).not_to_contain_text("chat you left")
    page.unroute("**/api/v1/sessions/*/messages/")

    # The message to the chat left is refused for the rate: said as that chat's.
    held = hold(page, "**/api/v1/sessions/*/messages/")
    send(page, "Too fast for the first")
    page_waits_until(page, lambda: held)
    page.locator(f'#sessions button[data-session="{second}"]').click()
    expect(said).to_have_text(["In the second chat"])
    held[0].fulfill(
        status=429, headers={"Retry-After": "1"}, json={"detail": "Slow down.", "code": "throttled"}
    )
    page.unroute("**/api/v1/sessions/*/messages/")
    expect(page.get_by_role("alert")).to_contain_text("to the chat you left was not sent")
    expect(page.locator("#send")).to_be_enabled(timeout=10_000)
    page.locator(f'#sessions button[data-session="{first}"]').click()
    expect(said).to_have_count(3)

    # The chat left has expired by the time its message arrives: said as that chat's, and
    # the open chat keeps its view (no "expired" banner for it, its Delete still there).
    held = hold(page, "**/api/v1/sessions/*/messages/")
    send(page, "One more for the first")
    page_waits_until(page, lambda: held)
    page.locator(f'#sessions button[data-session="{second}"]').click()
    expect(said).to_have_text(["In the second chat"])
    ChatSession.objects.filter(pk=first).update(expires_at=timezone.now())
    held[0].continue_()
    expect(page.get_by_role("alert")).to_contain_text("chat you left was not sent")
    expect(page.locator("#banner")).not_to_have_attribute("data-kind", "expired")
    expect(page.get_by_role("button", name="Delete chat")).to_be_visible()
    expect(page.locator("#sessions button")).to_have_count(1)
    assert page.url.endswith(f"#{second}")
    assert_no_csp_violations(page)


def test_the_skip_link_moves_to_the_message_box_and_keeps_the_chat_open(site, open_context):
    UserFactory(username="frank")
    page = sign_in(open_context(), site, "frank")
    send(page, "Hello")
    expect(replies(page)).to_have_text(["Noted."])
    address = page.url
    skip = page.get_by_role("link", name="Skip to main content")
    skip.focus()  # as the page's first Tab stop would
    skip.press("Enter")
    expect(page.get_by_label("Message")).to_be_focused()
    # A fragment link to a part of the page, followed anyway (no script, say): the same.
    page.evaluate("() => { window.location.hash = 'message'; }")
    expect(page).to_have_url(address)
    expect(page.get_by_role("alert")).to_be_hidden()
    expect(replies(page)).to_have_text(["Noted."])
    expect(page.get_by_role("button", name="Delete chat")).to_be_visible()
    assert_no_csp_violations(page)


def test_a_sign_in_in_another_tab_asks_for_a_reload_and_keeps_the_text(site, open_context):
    UserFactory(username="grace")
    context = open_context()
    page = sign_in(context, site, "grace")
    send(page, "Before")
    expect(replies(page)).to_have_text(["Noted."])
    # Signing in again (another tab) gives the browser a new CSRF token; this page's is stale.
    other = sign_in_again(context, site, "grace")
    other.close()
    send(page, "After signing in again")
    expect(page.get_by_role("alert")).to_contain_text("out of date")
    expect(page.get_by_label("Message")).to_have_value("After signing in again")
    # The browser's own reload, not the banner's button: the text is kept all the same.
    page.reload(wait_until="load")
    expect(page.locator("#sessions button[aria-current]")).to_have_count(1)
    expect(replies(page)).to_have_text(["Noted."])
    expect(page.get_by_label("Message")).to_have_value("After signing in again")
    # Handed over once: nothing is left in the tab's storage.
    assert page.evaluate("() => Object.keys(sessionStorage).filter(k => k.includes('draft'))") == []
    page.get_by_label("Message").press("Enter")
    expect(replies(page)).to_have_text(["Noted.", "Noted."])
    expect(page.get_by_role("alert")).to_be_hidden()
    page.reload(wait_until="load")
    expect(replies(page)).to_have_count(2)
    expect(page.get_by_label("Message")).to_have_value("")
    assert_no_csp_violations(page)


def sign_in_again(context: BrowserContext, url: str, username: str) -> Page:
    page = context.new_page()
    page.goto(f"{url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()
    return page


@pytest.mark.parametrize("reread", ["after a reply", "after a lost connection"])
def test_a_tab_left_open_by_one_account_never_reads_the_next_ones_chats(
    site, open_context, fake_claude, reread
):
    """One browser: Uma's chat tab stays open while Victor signs in in another tab, which
    gives the browser his cookie. Uma's page rereads its chat list by itself (a reply's end,
    a reconnect): the API answers it only for Uma, so it asks for a reload and draws
    nothing of Victor's, and his audit trail gets no false "another user's session"."""
    UserFactory(username="uma")
    victor = UserFactory(username="victor")
    chat_session_create(owner=victor, title="Victor's private chat")
    context = open_context()
    page = sign_in(context, site, "uma")
    if reread == "after a reply":
        fake_claude.delay(3.0)
        send(page, "Hello from Uma")
        expect(page.locator("#pending")).to_be_visible()
        sign_in_again(context, site, "victor").close()
    else:
        send(page, "Hello from Uma")
        expect(replies(page)).to_have_text(["Noted."])
        sign_in_again(context, site, "victor").close()
        context.set_offline(True)
        expect(page.get_by_role("alert")).to_contain_text("Connection lost")
        context.set_offline(False)
    expect(page.get_by_role("alert")).to_contain_text("another account has signed in")
    expect(page.locator(".signed-in")).to_contain_text("uma")
    expect(page.locator("#sessions")).not_to_contain_text("Victor")
    assert not AuditEntry.objects.filter(kind="security", user=victor).exists()
    page.get_by_role("button", name="Reload the page").click()
    expect(page.locator(".signed-in")).to_contain_text("victor")
    expect(page.locator("#sessions")).to_contain_text("Victor's private chat")
    expect(page.locator("#sessions")).not_to_contain_text("Hello from Uma")
    assert_no_csp_violations(page)


def test_a_draft_kept_for_a_new_sign_in_returns_to_the_chat_it_was_typed_in(site, open_context):
    """Signed out while typing in an older chat, or in a new one: after "Log in" the text
    is back in that chat's box, not in the newest chat's, where Enter would post it."""
    rita = UserFactory(username="rita")
    context = open_context()
    page = sign_in(context, site, "rita")
    said = page.locator("#log .msg.user .text")
    for text in ("In the first chat", "In the second chat"):
        if text != "In the first chat":
            page.get_by_role("button", name="New chat").click()
        send(page, text)
        expect(replies(page)).to_have_text(["Noted."])
    first = str(ChatSession.objects.filter(owner=rita).earliest("created_at").pk)
    page.locator(f'#sessions button[data-session="{first}"]').click()
    expect(said).to_have_text(["In the first chat"])
    for typed, chat, shown in (
        ("Meant for the first chat", first, ["In the first chat"]),
        ("Meant for a new chat", None, []),
    ):
        if chat is None:
            page.get_by_role("button", name="New chat").click()
        context.clear_cookies()  # the sign-in ends (expired, or signed out elsewhere)
        send(page, typed)
        expect(page.get_by_role("alert")).to_contain_text("You are signed out")
        page.get_by_role("button", name="Log in").click()
        page.get_by_label("Username").fill("rita")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_label("Message")).to_have_value(typed)
        expect(said).to_have_text(shown)
        current = page.locator("#sessions button[aria-current]")
        if chat is None:
            expect(current).to_have_count(0)
        else:
            expect(current).to_have_attribute("data-session", chat)
    assert_no_csp_violations(page)


def test_what_the_tab_kept_for_another_account_is_forgotten(site, open_context):
    """A shared browser: another account's draft (kept for its sign-in) and its chats' turn
    ids are dropped from the tab's storage when this account's page opens."""
    UserFactory(username="olga")
    context = open_context()
    page = sign_in(context, site, "olga")
    send(page, "Mine")
    expect(replies(page)).to_have_text(["Noted."])
    page.evaluate(
        """() => {
          sessionStorage.setItem('isolated-chat:draft:99999', 'Another account typed this');
          sessionStorage.setItem('isolated-chat:turn:0000-not-mine', 'a-turn-id');
          sessionStorage.setItem('isolated-chat:draft:' + document.getElementById('chat')
            .dataset.user, 'My own draft');
        }"""
    )
    page.reload(wait_until="load")
    expect(page.get_by_label("Message")).to_have_value("My own draft")
    expect(page.locator("#sessions button[aria-current]")).to_have_count(1)  # list read
    kept = page.evaluate("() => Object.keys(sessionStorage)")
    assert not [key for key in kept if "99999" in key or "not-mine" in key], kept
    assert "Another account typed this" not in page.content()
    assert_no_csp_violations(page)


def test_signing_out_leaves_nothing_of_the_account_for_the_next_in_the_tab(site, open_context):
    """A shared browser, one tab: the text Peggy typed but did not send is neither restored by
    the browser into Quentin's box when he goes Back, nor left in the tab's storage."""
    UserFactory(username="peggy"), UserFactory(username="quentin")
    context = open_context()
    page = sign_in(context, site, "peggy")
    send(page, "Hello")
    expect(replies(page)).to_have_text(["Noted."])
    page.get_by_label("Message").fill("Peggy's unsent words")
    page.evaluate(
        "() => { sessionStorage.setItem('isolated-chat:draft:' + "
        "document.getElementById('chat').dataset.user, 'kept for Peggy'); }"
    )
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert page.evaluate("() => Object.keys(sessionStorage)") == []
    page.get_by_label("Username").fill("quentin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()
    # Back twice, as one history traversal: two ``go_back`` calls in a row can find the
    # tab between renderers ("Not attached to an active page"). Scheduled, not run in the
    # evaluate, which the navigation would cut short.
    with page.expect_navigation():
        page.evaluate("() => { setTimeout(() => history.go(-2)); }")
    expect(page.get_by_role("button", name="New chat", exact=True)).to_be_visible()
    page.wait_for_load_state("load")
    expect(page.get_by_label("Message")).to_have_value("")
    assert "Peggy" not in page.content()
    assert_no_csp_violations(page)


def test_a_refused_retry_keeps_the_failed_message_and_its_retry(site, open_context, fake_claude):
    UserFactory(username="heidi")
    page = sign_in(open_context(), site, "heidi")
    fake_claude.fail(500, times=CALLS_PER_TURN)
    send(page, "Hello there")
    failed = page.locator("#log .msg.failed")
    expect(failed).to_contain_text("HTTP 500")

    page.route(
        "**/api/v1/sessions/*/messages/",
        lambda route: route.fulfill(
            status=503, json={"detail": "Unavailable.", "code": "unavailable"}
        ),
        times=1,
    )
    failed.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("alert")).to_contain_text("briefly unavailable")
    expect(page.get_by_role("alert")).to_contain_text("Retry again")
    expect(failed).to_have_count(1)
    failed.get_by_role("button", name="Retry").click()
    expect(failed).to_have_count(0)
    expect(replies(page)).to_have_text(["Noted."])
    assert_no_csp_violations(page)


def test_try_again_sends_the_message_as_it_is_in_the_box_now(site, open_context):
    """The banner says the unsent message is still in the box; its Try again sent the text
    as first sent, so a message corrected meanwhile went out uncorrected, the correction
    left in the box."""
    UserFactory(username="hugo")
    page = sign_in(open_context(), site, "hugo")
    page.route(
        "**/api/v1/sessions/*/messages/",
        lambda route: route.fulfill(
            status=503, json={"detail": "Unavailable.", "code": "unavailable"}
        ),
        times=1,
    )
    send(page, "My order is 1234")
    expect(page.get_by_role("alert")).to_contain_text("It is still in the box")
    page.get_by_label("Message").fill("My order is 12345")
    page.get_by_role("button", name="Try again").click()
    expect(replies(page)).to_have_text(["Noted."])
    expect(page.locator("#log .msg.user .text")).to_have_text(["My order is 12345"])
    expect(page.get_by_label("Message")).to_have_value("")
    assert_no_csp_violations(page)


def throttle_once(page: Page, seconds: int) -> None:
    page.route(
        "**/api/v1/sessions/",
        lambda route: route.fulfill(
            status=429,
            headers={"Retry-After": str(seconds)},
            json={"detail": "Too many requests.", "code": "throttled"},
        ),
        times=1,
    )


def test_the_rate_limit_is_said_once_and_counted_down_on_send(site, open_context):
    UserFactory(username="ivan")
    context = open_context()
    page = sign_in(context, site, "ivan")
    throttle_once(page, 3)
    page.evaluate(
        """() => {
          window.bannerTexts = [];
          new MutationObserver(() => window.bannerTexts.push(
            document.getElementById('banner-text').textContent)
          ).observe(document.getElementById('banner'),
                    {subtree: true, childList: true, characterData: true});
        }"""
    )
    send(page, "Too soon")
    expect(page.get_by_role("alert")).to_contain_text("Wait 3 seconds")
    send_button = page.locator("#send")
    expect(send_button).to_be_disabled()
    expect(send_button).to_have_text(re.compile(r"Send \(\d\)"))
    expect(send_button).to_be_enabled(timeout=10_000)
    expect(send_button).to_have_text("Send")
    expect(page.get_by_role("alert")).to_be_hidden()
    texts = [t for t in page.evaluate("window.bannerTexts") if t]
    assert len(texts) == 1, texts  # the alert was written once, not every second
    expect(page.get_by_label("Message")).to_have_value("Too soon")

    # The countdown's end hides its own banner, not one shown since.
    throttle_once(page, 6)
    send(page, "Too soon")
    expect(page.get_by_role("alert")).to_contain_text("Wait 6 seconds")
    context.set_offline(True)
    expect(page.get_by_role("alert")).to_contain_text("Connection lost")
    expect(send_button).to_be_disabled()  # the offline banner came while it counted down
    expect(send_button).to_be_enabled(timeout=15_000)
    expect(page.get_by_role("alert")).to_contain_text("Connection lost")
    context.set_offline(False)
    expect(page.get_by_role("alert")).to_be_hidden()
    page.get_by_label("Message").press("Enter")
    expect(replies(page)).to_have_text(["Noted."])
    assert_no_csp_violations(page)


def test_every_chat_is_listed_past_the_first_page(site, open_context):
    judy = UserFactory(username="judy")
    for n in range(101):
        chat_session_create(owner=judy, title=f"Chat number {n}")
    page = sign_in(open_context(), site, "judy")
    expect(page.locator("#sessions button")).to_have_count(101)
    assert_no_csp_violations(page)


def test_a_reply_ended_while_the_page_loaded_is_shown(site, open_context, fake_claude):
    kim = UserFactory(username="kim")
    page = sign_in(open_context(), site, "kim")
    send(page, "Hello")
    expect(replies(page)).to_have_text(["Noted."])
    fake_claude.delay(8.0)
    send(page, "A slow one")
    expect(page.locator("#pending")).to_be_visible()
    # Reloaded while it is answered: the history is read, then the turn is held until it
    # has ended, so the reply is in neither the history nor the (pending) turn first seen.
    address = page.url
    page.goto("about:blank")  # the old page gone first: none of its reads can be held
    held = hold(page, "**/api/v1/turns/*/", method="GET")
    page.goto(address)
    page_waits_until(page, lambda: held)
    turn = Turn.objects.filter(session__owner=kim).latest("created_at")
    assert turn.status in ("pending", "running")
    page_waits_until(page, lambda: Turn.objects.get(pk=turn.pk).status == "completed")
    held[0].continue_()
    expect(replies(page)).to_have_text(["Noted.", "Noted."])
    expect(page.locator("#pending")).to_be_hidden()
    expect(page.locator("#live")).to_contain_text("Assistant: Noted.")
    assert_no_csp_violations(page)


def test_a_message_whose_answer_the_connection_lost_is_caught_up(site, open_context, fake_claude):
    UserFactory(username="lena")
    page = sign_in(open_context(), site, "lena")
    send(page, "Hello")
    expect(replies(page)).to_have_text(["Noted."])
    messages = "**/api/v1/sessions/*/messages/"

    # The server takes the message, and the connection goes before its answer arrives.
    def answer_lost(route) -> None:
        route.fetch()
        route.abort("connectionreset")

    fake_claude.delay(8.0)
    page.route(messages, answer_lost, times=1)
    send(page, "Taken, answer lost")
    expect(page.get_by_role("alert")).to_contain_text("Connection lost")
    # Reconnected, the page finds the message in the history and waits for its reply.
    expect(page.locator("#log .msg.user .text")).to_have_text(["Hello", "Taken, answer lost"])
    expect(page.get_by_label("Message")).to_have_value("")
    expect(page.locator("#pending")).to_be_visible()
    # Another chat opened and this one again meanwhile: the reply is still looked for.
    chat = page.url.split("#", 1)[1]
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#log .msg")).to_have_count(0)
    page.locator(f'#sessions button[data-session="{chat}"]').click()
    expect(page.locator("#pending")).to_be_visible()
    expect(replies(page)).to_have_text(["Noted.", "Noted."])
    expect(page.locator("#pending")).to_be_hidden()
    expect(page.locator("#live")).to_contain_text("Assistant: Noted.")

    # Lost before the server had it: said, and the text is still in the box.
    page.route(messages, lambda route: route.abort("connectionreset"), times=1)
    send(page, "Never taken")
    expect(page.get_by_role("alert")).to_contain_text("was not sent")
    expect(page.get_by_label("Message")).to_have_value("Never taken")
    expect(page.locator("#log .msg.user")).to_have_count(2)
    page.get_by_label("Message").press("Enter")
    expect(replies(page)).to_have_text(["Noted.", "Noted.", "Noted."])
    assert_no_csp_violations(page)


def test_a_failure_older_than_the_chat_shown_is_not_drawn_again(site, open_context, fake_claude):
    mona = UserFactory(username="mona")
    page = sign_in(open_context(), site, "mona")
    fake_claude.fail(500, times=CALLS_PER_TURN)
    send(page, "Hello there")
    expect(page.locator("#log .msg.failed")).to_contain_text("HTTP 500")
    # A message from another tab (or client) is answered in this chat meanwhile.
    session = ChatSession.objects.get(owner=mona)
    turn = services.message_accept(user=mona, session_id=session.pk, content="From elsewhere")
    tasks.turn_enqueue(turn=turn)
    page_waits_until(page, lambda: Turn.objects.get(pk=turn.pk).status == "completed")
    page.reload(wait_until="load")
    expect(page.locator("#log .msg.user .text")).to_have_text(["Hello there", "From elsewhere"])
    expect(replies(page)).to_have_text(["Noted."])
    expect(page.locator("#log .msg.failed")).to_have_count(0)
    assert_no_csp_violations(page)


def test_a_send_while_the_chats_could_not_be_read_is_refused_and_kept(site, open_context):
    UserFactory(username="nils")
    context = open_context()
    context.route(
        re.compile(r".*/api/v1/sessions/\?page=1$"),
        lambda route: route.fulfill(
            status=503, json={"detail": "Unavailable.", "code": "unavailable"}
        ),
        times=1,
    )
    page = sign_in(context, site, "nils")
    expect(page.get_by_role("alert")).to_contain_text("briefly unavailable")
    send(page, "Before the list")
    expect(page.get_by_role("alert")).to_contain_text("could not be read")
    expect(page.get_by_label("Message")).to_have_value("Before the list")
    expect(page.locator("#send")).to_be_enabled()
    page.get_by_role("button", name="Try again").click()
    expect(page.get_by_role("alert")).to_be_hidden()
    page.get_by_label("Message").press("Enter")
    expect(replies(page)).to_have_text(["Noted."])
    assert_no_csp_violations(page)
