// The chat page: talks to /api/v1/ with the session cookie and the CSRF token.
// No framework and no build step; the Content Security Policy allows no inline script.
"use strict";

(() => {
  const root = document.getElementById("chat");
  if (!root) return;

  const API = root.dataset.api;
  const LOGIN_URL = root.dataset.loginUrl;
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const TERMINAL = new Set(["completed", "suppressed", "failed"]);
  const POLL_MS = 1000;
  const CATCH_UP_MS = 180000; // a reply looked for in the history, every 2 s, for 3 minutes
  const TURN_KEY = "isolated-chat:turn:"; // sessionStorage: the last turn of each chat (ids only)
  // sessionStorage: text typed but not sent when the page must be reloaded or signed in again.
  // Keyed by the signed-in user, so a different account signing in in this tab never sees it.
  const DRAFT_PREFIX = "isolated-chat:draft:";
  const DRAFT_KEY = DRAFT_PREFIX + root.dataset.user;

  const $ = (id) => document.getElementById(id);
  const els = {
    sessions: $("sessions"),
    sessionsEmpty: $("sessions-empty"),
    newChat: $("new-chat"),
    title: $("chat-title"),
    del: $("delete-chat"),
    banner: $("banner"),
    bannerText: $("banner-text"),
    bannerAction: $("banner-action"),
    log: $("log"),
    pending: $("pending"),
    live: $("live"),
    composer: $("composer"),
    message: $("message"),
    send: $("send"),
    dialog: $("confirm-delete"),
  };

  const state = {
    sessionId: null, // the open chat; null for a new chat not saved yet
    sessions: [],
    turn: null, // the open chat's turn being watched: {id, sessionId}
    stream: null,
    pollTimer: null,
    sending: false,
    offline: false,
    loads: 0, // which view is shown: bumped each time a chat (or a new one) is (re)opened
    loading: true, // the open chat's history (first the chat list) is read: a send waits
    loaded: [], // the sends waiting for it
    opened: false, // a chat (or a new one) has been opened since the page loaded
    lists: 0, // the newest reading of the chat list wins
    listing: null, // that reading
    // A message whose answer the connection lost: {sessionId, afterSeq, content}, then
    // with ``seq`` (taken) and ``until`` while its reply is looked for in the history.
    awaiting: null,
    bannerAction: null,
    coolDown: null, // the 429 countdown, while Send waits
    reconnectTimer: null,
    // The chat a kept draft was typed in ("" a new chat), opened first; null: no draft.
    draftChat: null,
  };

  // ---- the API ----------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      super((body && body.detail) || `The server answered ${status}.`);
      this.status = status;
      this.code = (body && body.code) || "";
      this.retryAfter = Number.parseInt(retryAfter || "", 10) || null;
    }
  }
  class ConnectionLost extends Error {}

  async function api(method, path, body) {
    // X-Page-User: the server answers only for the user this page was drawn for, not for
    // whoever signed in on this browser since (the cookie is the browser's, not the tab's).
    const headers = {
      Accept: "application/json",
      "X-CSRFToken": CSRF,
      "X-Page-User": root.dataset.user,
    };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(API + path, {
        method,
        headers,
        credentials: "same-origin",
        cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ConnectionLost("The connection to the server was lost.");
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null; // a proxy's HTML error page, say
    }
    if (!response.ok) throw new ApiError(response.status, data, response.headers.get("Retry-After"));
    return data;
  }

  // Every page of a list from page ``first``: the API serves 100 items a page. A page past
  // the end (the list shrank between two reads) ends it.
  async function allPages(path, first = 1) {
    const all = [];
    for (let page = first; ; page += 1) {
      let data;
      try {
        data = await api("GET", `${path}?page=${page}`);
      } catch (err) {
        if (page > first && err instanceof ApiError && err.status === 404) return all;
        throw err;
      }
      all.push(...data.results);
      if (!data.next) return all;
    }
  }

  function messagesOf(sessionId) {
    return allPages(`sessions/${sessionId}/messages/`);
  }

  // ---- what the user sees ------------------------------------------------------------

  function announce(text) {
    els.live.textContent = "";
    window.setTimeout(() => {
      els.live.textContent = text;
    }, 50);
  }

  // ``kind`` (else the action's) names the banner, so that one ending by itself (the rate
  // limit's) never hides another shown since.
  function showBanner(text, action, kind) {
    els.bannerText.textContent = text;
    state.bannerAction = action ? action.run : null;
    els.bannerAction.hidden = !action;
    if (action) els.bannerAction.textContent = action.label;
    els.banner.dataset.kind = kind || (action && action.kind) || "";
    els.banner.hidden = false;
    scrollToEnd(); // the banner took room from the conversation: keep its end in sight
  }

  function hideBanner(kind) {
    if (kind !== undefined && els.banner.dataset.kind !== kind) return; // another's, since
    els.banner.hidden = true;
    els.banner.dataset.kind = "";
    state.bannerAction = null;
  }

  function updateSend() {
    els.send.disabled = state.sending || Boolean(state.coolDown);
  }

  function showPending(on) {
    els.pending.hidden = !on;
    els.log.setAttribute("aria-busy", on ? "true" : "false");
    if (on) scrollToEnd();
  }

  function scrollToEnd() {
    els.log.scrollTop = els.log.scrollHeight;
  }

  function clearLog() {
    els.log.replaceChildren();
    const empty = document.createElement("li");
    empty.className = "empty muted";
    empty.id = "log-empty";
    empty.textContent = "Say hello: the assistant only knows what you tell it in this chat.";
    els.log.append(empty);
  }

  function messageItem(role, text, extraClass) {
    $("log-empty")?.remove();
    const li = document.createElement("li");
    li.className = `msg ${role}${extraClass ? ` ${extraClass}` : ""}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    li.append(who, body);
    els.log.append(li);
    scrollToEnd();
    return li;
  }

  function shownItem(seq) {
    return els.log.querySelector(`.msg[data-seq="${seq}"]`);
  }

  function appendMessage(message) {
    // Read twice (the history, then the turn that carried it): drawn once.
    const drawn = shownItem(message.seq);
    if (drawn) return drawn;
    const suppressed = message.status === "suppressed";
    const li = messageItem(message.role, message.content, suppressed ? "suppressed" : "");
    li.dataset.seq = message.seq;
    if (suppressed) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "Withheld for review";
      li.querySelector(".who").append(" ", badge);
    }
    return li;
  }

  function showFailed(turn) {
    const detail = (turn.error && turn.error.detail) || "The assistant could not answer.";
    const li = messageItem("assistant", `No reply: ${detail}`, "failed");
    li.setAttribute("role", "group");
    li.setAttribute("aria-label", "Failed reply");
    const retry = document.createElement("button");
    retry.type = "button";
    retry.textContent = "Retry";
    // The failed reply stays, Retry with it, until the message is accepted again.
    retry.addEventListener("click", async () => {
      retry.disabled = true;
      if (await send(turn.user_message.content, { retry: true })) li.remove();
      else retry.disabled = false;
    });
    li.append(retry);
    announce(`The assistant could not reply. ${detail} Use Retry to send your message again.`);
  }

  function renderSessions() {
    const focused = document.activeElement && document.activeElement.dataset.session;
    els.sessions.replaceChildren();
    for (const session of state.sessions) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.session = session.id;
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = session.title || "Untitled chat";
      const count = document.createElement("span");
      count.className = "count";
      const n = session.message_count;
      count.textContent = `${n} message${n === 1 ? "" : "s"}`;
      button.append(title, count);
      if (session.id === state.sessionId) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => openSession(session.id, { push: true }));
      li.append(button);
      els.sessions.append(li);
      if (session.id === focused) button.focus();
    }
    els.sessionsEmpty.hidden = state.sessions.length > 0;
  }

  // The address names the open chat (#id). A chat the user picks is a new history entry,
  // so Back and Forward (the hashchange handler) go through the chats seen.
  function setOpenChat(sessionId, { push = false } = {}) {
    state.sessionId = sessionId;
    const session = state.sessions.find((s) => s.id === sessionId);
    els.title.textContent = session ? session.title || "Untitled chat" : "New chat";
    els.del.hidden = !sessionId;
    const url = sessionId ? `#${sessionId}` : window.location.pathname;
    const moved = (sessionId || "") !== addressedChat();
    if (push && moved) window.history.pushState(null, "", url);
    else window.history.replaceState(null, "", url);
    renderSessions();
  }

  // The chat the address names; a link to a part of this page (no chat id is an element's
  // id) names none.
  function addressedChat() {
    const hash = window.location.hash.slice(1);
    return hash && document.getElementById(hash) ? "" : hash;
  }

  // ---- errors: each says what to do --------------------------------------------------

  // ``content``: the message that was not sent; ``retry``: it was a failed reply's Retry (the
  // text is then by that reply, not in the box); ``left``: the id of the chat it was sent to,
  // when the user has opened another since: its errors must not be blamed on the open one.
  function handleError(err, { content, retry = false, left = false } = {}) {
    if (err instanceof ConnectionLost) return connectionLost();
    if (!(err instanceof ApiError)) {
      showBanner(`Something went wrong in this page: ${err.message}`, reloadAction());
      return;
    }
    const { status } = err;
    const sent = content !== undefined;
    const kept = retry ? "Use its Retry again" : "It is still in the box";
    if (status === 401 && err.code === "signed_in_as_another_user") {
      keepDraft(); // for a reload by the same account; another's page drops it unread
      showBanner(
        "This page is out of date: another account has signed in on this browser since it " +
          "was opened (in another tab, say). Reload the page to go on.",
        { label: "Reload the page", kind: "stale", run: () => window.location.reload() },
      );
    } else if (status === 401) {
      keepDraft();
      showBanner("You are signed out: your sign-in has ended. Log in again to go on.", {
        label: "Log in",
        kind: "signed-out",
        run: () => window.location.assign(LOGIN_URL),
      });
    } else if (status === 403 && err.message.startsWith("CSRF Failed")) {
      // The session cookie is good but this page's CSRF token is not: someone signed in on
      // this browser since the page was opened, which gives a new token. A reload reads it.
      keepDraft();
      showBanner(
        "This page is out of date: there was a sign-in on this browser since it was opened " +
          "(in another tab, say). Reload the page to go on; what you typed is kept.",
        { label: "Reload the page", kind: "stale", run: () => window.location.reload() },
      );
    } else if (status === 429) {
      // The user's own rate, whichever chat was sent to; the box serves the open chat.
      const leftChat = left && left !== "new";
      coolDown(
        err.retryAfter || 10,
        leftChat ? "Your message to the chat you left was not sent: open it" : kept,
      );
    } else if (left === "new") {
      showBanner(
        `Your message for a new chat was not sent: ${err.message} Start a new chat to send ` +
          "it again.",
        { label: "Start a new chat", run: () => newChat({ push: true }) },
      );
    } else if (left) {
      // Said without touching the open chat's view, nor pointing at the box: Send there
      // would post to the open chat.
      if (status === 404) {
        dropChat(left);
        showBanner(
          "Your message to the chat you left was not sent: that chat has expired or was " +
            "deleted.",
          null,
        );
      } else {
        showBanner(
          `Your message to the chat you left was not sent: ${err.message} Open that chat ` +
            "to send it again.",
          { label: "Open that chat", run: () => openSession(left, { push: true }) },
        );
      }
    } else if (status === 404) {
      chatGone(state.sessionId);
    } else if (status === 409) {
      showBanner(
        "The assistant is still answering your previous message in this chat. " +
          `Wait for its reply, then send this one again. ${kept}.`,
        null,
      );
      if (!state.turn) openSession(state.sessionId, { quiet: true });
    } else if (status >= 500) {
      showBanner(
        sent
          ? `The service is briefly unavailable, so your message was not sent. ${kept}: ` +
              "try again in a moment."
          : "The service is briefly unavailable. Try again in a moment.",
        // What the box holds then: the banner points there, and the text may have been
        // corrected meanwhile (Send would send it so too).
        sent && !retry
          ? { label: "Try again", kind: "unavailable", run: () => send(els.message.value) }
          : { label: "Try again", kind: "unavailable", run: () => refresh() },
      );
    } else {
      showBanner(`${err.message}`, null); // 400, 403, 413: the API's own sentence
    }
  }

  // The unsent text, kept in this tab for a reload or a new sign-in: now, and again as the
  // page goes (typed on meanwhile), while the banner asks for either.
  function keepDraft() {
    if (!els.message.value) return dropDraft();
    // With the chat it was typed in: the page a sign-in lands on would open the newest.
    const draft = { chat: state.sessionId || "", text: els.message.value };
    try {
      window.sessionStorage.setItem(DRAFT_KEY, JSON.stringify(draft));
    } catch {
      // Storage off: the text is lost with the page, as without this.
    }
  }

  function dropDraft() {
    try {
      window.sessionStorage.removeItem(DRAFT_KEY);
    } catch {
      // as above
    }
  }

  function restoreDraft() {
    let kept = null;
    try {
      kept = window.sessionStorage.getItem(DRAFT_KEY);
      dropDraft();
    } catch {
      // as above
    }
    if (!kept) return;
    let draft;
    try {
      draft = JSON.parse(kept);
    } catch {
      draft = null;
    }
    // Kept by the page before drafts named their chat: the text alone.
    if (!draft || typeof draft.text !== "string") draft = { chat: null, text: kept };
    if (!els.message.value) els.message.value = draft.text;
    if (typeof draft.chat === "string") state.draftChat = draft.chat;
  }

  function reloadAction() {
    return { label: "Reload the page", run: () => window.location.reload() };
  }

  function dropChat(sessionId) {
    forgetTurn(sessionId);
    state.sessions = state.sessions.filter((s) => s.id !== sessionId);
    renderSessions();
  }

  function chatGone(sessionId) {
    if (sessionId) dropChat(sessionId);
    stopWatching();
    showPending(false);
    renderSessions();
    els.del.hidden = true;
    showBanner(
      "This chat has expired or was deleted: chats end after a while without messages. " +
        "Start a new chat to go on; what you typed stays in the box.",
      { label: "Start a new chat", kind: "expired", run: () => newChat() },
    );
  }

  // The alert is said once; the seconds left count down on the Send button, which a screen
  // reader does not re-announce (rewriting a role="alert" each second would).
  function coolDown(seconds, kept = "It is still in the box") {
    window.clearInterval(state.coolDown);
    let left = seconds;
    const label = els.send.dataset.label || els.send.textContent;
    els.send.dataset.label = label;
    // Shown, not part of the button's name: a focused control's name change is announced.
    const count = document.createElement("span");
    count.setAttribute("aria-hidden", "true");
    els.send.replaceChildren(label, count);
    const tick = () => {
      count.textContent = ` (${left})`;
    };
    showBanner(
      `You are sending messages too fast. Wait ${seconds} second${seconds === 1 ? "" : "s"}, ` +
        `then send again. ${kept}.`,
      null,
      "throttled",
    );
    tick();
    state.coolDown = window.setInterval(() => {
      left -= 1;
      if (left > 0) return tick();
      window.clearInterval(state.coolDown);
      state.coolDown = null;
      els.send.textContent = label;
      updateSend();
      hideBanner("throttled");
      announce("You can send again.");
    }, 1000);
    updateSend();
  }

  // ---- a lost connection: say so, and recover by itself ------------------------------

  function connectionLost() {
    closeStream();
    window.clearTimeout(state.pollTimer);
    if (state.offline) return;
    state.offline = true;
    showBanner(
      "Connection lost. Reconnecting… This page catches up by itself, and says what was sent.",
      { label: "Try now", kind: "offline", run: () => reconnect(0) },
    );
    reconnect(1000);
  }

  function reconnect(delay) {
    window.clearTimeout(state.reconnectTimer);
    state.reconnectTimer = window.setTimeout(async () => {
      try {
        await fetch("/healthz", { cache: "no-store" }); // any answer: the server is reachable
      } catch {
        reconnect(Math.min(Math.max(delay, 500) * 2, 10000));
        return;
      }
      if (!state.offline) return;
      state.offline = false;
      hideBanner("offline");
      announce("Connection restored.");
      await refresh();
    }, delay);
  }

  async function refresh() {
    try {
      await loadSessions();
    } catch (err) {
      return handleError(err);
    }
    hideBanner("unavailable");
    if (state.sessionId) return openSession(state.sessionId, { quiet: true });
    // The page had not opened its first chat yet when the connection went (else a new
    // chat is open, and stays so).
    if (!state.opened) {
      forgetOthers(); // as start would have, had its read of the list succeeded
      return openAddressed(firstChat());
    }
  }

  // ---- a turn: the event stream, polling as the fallback -----------------------------

  function rememberTurn(sessionId, turnId) {
    try {
      window.sessionStorage.setItem(TURN_KEY + sessionId, turnId);
    } catch {
      // Storage may be off: only resuming after a reload is lost.
    }
  }

  function forgetTurn(sessionId) {
    try {
      window.sessionStorage.removeItem(TURN_KEY + sessionId);
    } catch {
      // as above
    }
  }

  function rememberedTurn(sessionId) {
    try {
      return window.sessionStorage.getItem(TURN_KEY + sessionId);
    } catch {
      return null;
    }
  }

  function closeStream() {
    if (state.stream) state.stream.close();
    state.stream = null;
  }

  function stopWatching() {
    closeStream();
    window.clearTimeout(state.pollTimer);
    state.turn = null;
  }

  function watch(turn) {
    stopWatching();
    state.turn = { id: turn.id, sessionId: turn.session };
    rememberTurn(turn.session, turn.id);
    if (TERMINAL.has(turn.status)) return finish(turn);
    showPending(true);
    if (!("EventSource" in window)) return schedulePoll(POLL_MS);
    const watched = state.turn;
    // No header of its own: the page's user rides in the address (see api()).
    const pageUser = encodeURIComponent(root.dataset.user);
    const stream = new EventSource(`${API}turns/${turn.id}/events/?page_user=${pageUser}`);
    state.stream = stream;
    stream.addEventListener("turn", (event) => {
      if (state.turn !== watched) return;
      const seen = JSON.parse(event.data);
      if (TERMINAL.has(seen.status)) finish(seen);
    });
    // Refused (429), cut, or ended without a terminal event: poll instead.
    stream.addEventListener("error", () => {
      if (state.stream !== stream) return;
      closeStream();
      schedulePoll(0);
    });
  }

  function schedulePoll(delay) {
    window.clearTimeout(state.pollTimer);
    state.pollTimer = window.setTimeout(pollOnce, delay);
  }

  async function pollOnce() {
    const watched = state.turn;
    if (!watched) return;
    try {
      const turn = await api("GET", `turns/${watched.id}/`);
      if (state.turn !== watched) return;
      if (TERMINAL.has(turn.status)) finish(turn);
      else schedulePoll(POLL_MS);
    } catch (err) {
      if (state.turn !== watched) return;
      if (err instanceof ApiError && (err.status === 429 || err.status >= 500)) {
        schedulePoll(POLL_MS * 3); // the turn goes on server-side; ask again a little later
      } else {
        handleError(err);
      }
    }
  }

  function announceReply(reply) {
    announce(
      reply.status === "suppressed"
        ? `The reply was withheld: ${reply.content}`
        : `Assistant: ${reply.content}`,
    );
  }

  function finish(turn) {
    stopWatching();
    showPending(false);
    if (turn.session !== state.sessionId) return;
    if (turn.status === "failed") {
      showFailed(turn);
    } else {
      forgetTurn(turn.session);
      appendMessage(turn.reply);
      announceReply(turn.reply);
    }
    // Message counts: an error here changes nothing shown, but a 401 is said at once (the
    // sign-in ended, or another account's began on this browser): nothing more works.
    loadSessions().catch((err) => {
      if (err instanceof ApiError && err.status === 401) handleError(err);
    });
  }

  // The chat's remembered turn, once its history is shown (``load``: that view, still open).
  async function resumeTurn(sessionId, load) {
    const turnId = rememberedTurn(sessionId);
    if (!turnId) return;
    let turn;
    try {
      turn = await api("GET", `turns/${turnId}/`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return forgetTurn(sessionId);
      throw err;
    }
    if (load !== state.loads || state.turn || rememberedTurn(sessionId) !== turnId) return;
    if (turn.status === "failed") {
      // A later message is shown (sent from another tab, or caught up): that failure and
      // its Retry belong to the past.
      if (lastSeqShown() > turn.user_message.seq) return forgetTurn(sessionId);
      return showFailed(turn);
    }
    if (!TERMINAL.has(turn.status)) return watch(turn);
    // Ended between the history's read and this one: its reply may not be shown yet.
    if (!shownItem(turn.reply.seq)) finish(turn);
    else forgetTurn(sessionId);
  }

  function lastSeqShown() {
    const shown = els.log.querySelectorAll(".msg[data-seq]");
    return shown.length ? Number(shown[shown.length - 1].dataset.seq) : 0;
  }

  // A message sent as the connection went: its answer (the turn, with its id) never came,
  // so the history says whether it was taken. Taken, its reply is looked for there until
  // it comes, each time its chat is open, for a while; not taken, the user is told, the
  // text still in the box. Called with each history read of the chat.
  function catchUp(sessionId, messages) {
    const awaiting = state.awaiting;
    if (!awaiting || awaiting.sessionId !== sessionId) return;
    if (awaiting.seq === undefined) {
      const after = messages.filter((m) => m.role === "user" && m.seq > awaiting.afterSeq);
      // Its own text, where the history shows it so (not redacted); else the first after.
      const taken = after.find((m) => m.content === awaiting.content) || after[0];
      if (!taken) {
        state.awaiting = null;
        showBanner(
          "Your last message was not sent: the connection went before the server had it. " +
            (awaiting.retry ? "Use its Retry again." : "It is still in the box: send it again."),
          null,
        );
        return;
      }
      if (els.message.value === awaiting.content) els.message.value = "";
      forgetTurn(sessionId); // the chat's remembered turn is an earlier one
      Object.assign(awaiting, { seq: taken.seq, until: Date.now() + CATCH_UP_MS });
    }
    if (messages.some((m) => m.role === "assistant" && m.seq > awaiting.seq)) {
      state.awaiting = null;
      return;
    }
    showPending(true);
    const index = messages.findIndex((m) => m.seq === awaiting.seq);
    lookForReply(awaiting, Math.floor(Math.max(index, 0) / 100) + 1);
  }

  // The history read from the page that holds the message. Opening another chat or
  // watching a turn stops it (``stopWatching``); opening this chat again goes on.
  function lookForReply(awaiting, page) {
    window.clearTimeout(state.pollTimer);
    state.pollTimer = window.setTimeout(async () => {
      const { sessionId } = awaiting;
      let reply = null;
      try {
        const messages = await allPages(`sessions/${sessionId}/messages/`, page);
        reply = messages.find((m) => m.role === "assistant" && m.seq > awaiting.seq);
      } catch (err) {
        if (state.awaiting !== awaiting || state.sessionId !== sessionId) return;
        const transient = err instanceof ApiError && (err.status === 429 || err.status >= 500);
        if (!transient) {
          if (!(err instanceof ConnectionLost)) state.awaiting = null; // gone, signed out
          return handleError(err); // a lost connection: looked for again once reconnected
        }
      }
      if (state.awaiting !== awaiting || state.sessionId !== sessionId || state.turn) return;
      if (reply) {
        state.awaiting = null;
        showPending(false);
        appendMessage(reply);
        announceReply(reply);
        loadSessions().catch(() => {});
      } else if (Date.now() < awaiting.until) {
        lookForReply(awaiting, page);
      } else {
        state.awaiting = null;
        showPending(false);
        showBanner(
          "No reply has come to your last message. It may have failed: if none shows after " +
            "a reload, send it again.",
          reloadAction(),
        );
      }
    }, 2000);
  }

  // ---- chats -------------------------------------------------------------------------

  // The chat list, read anew. Readings may overlap (a turn ends as the address changes):
  // every caller gets the newest one's list, never an older one's.
  function loadSessions() {
    state.listing = readSessions(++state.lists);
    return state.listing;
  }

  async function readSessions(reading) {
    const sessions = await allPages("sessions/");
    if (reading !== state.lists) return state.listing;
    // Pages read one by one: a chat created meanwhile shifts one onto the next page too.
    const seen = new Set();
    state.sessions = sessions.filter((s) => !seen.has(s.id) && seen.add(s.id));
    renderSessions();
    const open = state.sessions.find((s) => s.id === state.sessionId);
    if (open) els.title.textContent = open.title || "Untitled chat";
  }

  async function openSession(sessionId, { quiet = false, push = false } = {}) {
    const load = ++state.loads;
    stopWatching();
    showPending(false);
    if (!quiet) hideBanner();
    // Another chat's messages never stand under this one's title, even if its read fails.
    if (sessionId !== state.sessionId) els.log.replaceChildren();
    setOpenChat(sessionId, { push });
    setLoading(true);
    try {
      const messages = await messagesOf(sessionId);
      if (load !== state.loads) return;
      clearLog();
      for (const message of messages) appendMessage(message);
      catchUp(sessionId, messages);
      await resumeTurn(sessionId, load);
    } catch (err) {
      if (load === state.loads) handleError(err);
    } finally {
      if (load === state.loads) {
        state.opened = true;
        setLoading(false);
      }
    }
  }

  // A send waits while the open chat's history is read: sent at once, its message would
  // land in a view about to be redrawn, or in a new chat before the addressed one opened.
  // The waiters learn whether a chat is open: not when the page could not read its list.
  function setLoading(on) {
    state.loading = on;
    if (!on) for (const go of state.loaded.splice(0)) go(state.opened);
  }

  function untilLoaded() {
    if (!state.loading) return Promise.resolve(state.opened);
    return new Promise((go) => state.loaded.push(go));
  }

  function newChat({ push = false } = {}) {
    state.loads += 1;
    stopWatching();
    showPending(false);
    hideBanner();
    setOpenChat(null, { push });
    state.opened = true;
    setLoading(false);
    clearLog();
    els.message.focus();
  }

  function newTitle() {
    const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
    // A date, not the first message: a title shows in every list of the user's chats, and a
    // message may hold personal data (which the server would protect, but need not see here).
    return `Chat of ${when.format(new Date())}`;
  }

  // Send ``content`` to the open chat (a new one is created first); true once it is accepted.
  // The user may open another chat while this is in flight: the turn then belongs to the
  // chat it was sent to, remembered there, and nothing of it is drawn in the one now open.
  async function send(content, { retry = false } = {}) {
    if (state.sending || state.coolDown) return false;
    if (!content.trim()) {
      els.message.focus();
      announce("Write a message first.");
      return false;
    }
    state.sending = true;
    updateSend();
    // The chat it is sent from: once the page has opened one, a send waiting for a
    // history is for that chat, not for one the user opens meanwhile.
    const from = state.opened ? state.sessionId : undefined;
    const opened = await untilLoaded();
    if (!opened || (from !== undefined && from !== state.sessionId)) {
      state.sending = false;
      updateSend();
      showBanner(
        opened
          ? "Your message was not sent: another chat was opened before it could be. It is " +
              "still in the box."
          : "Your chats could not be read, so your message was not sent. It is still in the box.",
        opened ? null : { label: "Try again", kind: "unavailable", run: () => refresh() },
      );
      return false;
    }
    const load = state.loads;
    let sessionId = state.sessionId;
    const afterSeq = lastSeqShown();
    let posted = false;
    hideBanner();
    // Still the view it was sent from, or that chat reopened since (a refresh, a click on
    // it): then the history now read shows the message, and its turn is resumed.
    const left = () => (sessionId === state.sessionId ? false : sessionId || "new");
    try {
      if (!sessionId) {
        const session = await api("POST", "sessions/", { title: newTitle() });
        sessionId = session.id;
        state.sessions.unshift(session);
        if (load === state.loads) setOpenChat(sessionId);
        else renderSessions();
      }
      posted = true;
      const turn = await api("POST", `sessions/${sessionId}/messages/`, { content });
      posted = false;
      if (!retry && els.message.value === content) els.message.value = "";
      dropDraft();
      rememberTurn(sessionId, turn.id);
      const caughtUp = state.awaiting && state.awaiting.sessionId === sessionId;
      if (caughtUp) state.awaiting = null; // the turn it awaited has ended, or 409 would be
      if (load === state.loads && !caughtUp) {
        appendMessage(turn.user_message);
        watch(turn);
      } else if (!left()) {
        // Reread: the history shows the message (and a caught-up reply before it).
        openSession(sessionId, { quiet: true });
      } else {
        announce("Your message was sent to the chat you left; its reply will be there.");
      }
      loadSessions().catch(() => {});
      return true;
    } catch (err) {
      // Lost on its way, or only its answer: the history says which once reconnected.
      if (posted && err instanceof ConnectionLost && !left()) {
        state.awaiting = { sessionId, afterSeq, content, retry };
      }
      handleError(err, { content, retry, left: left() });
      return false;
    } finally {
      state.sending = false;
      updateSend();
    }
  }

  async function deleteChat() {
    const sessionId = state.sessionId;
    try {
      await api("DELETE", `sessions/${sessionId}/`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) return handleError(err);
    }
    forgetTurn(sessionId);
    state.sessions = state.sessions.filter((s) => s.id !== sessionId);
    if (state.sessionId === sessionId) newChat(); // else the user has opened another since
    else renderSessions();
    announce("The chat was deleted.");
    loadSessions().catch(handleError);
  }

  // ---- wiring ------------------------------------------------------------------------

  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send(els.message.value);
  });
  els.message.addEventListener("keydown", (event) => {
    const plainEnter = event.key === "Enter" && !event.shiftKey && !event.altKey;
    if (plainEnter && !event.ctrlKey && !event.metaKey && !event.isComposing) {
      event.preventDefault();
      if (!els.send.disabled) els.composer.requestSubmit();
    }
  });
  els.newChat.addEventListener("click", () => newChat({ push: true }));
  els.del.addEventListener("click", () => {
    els.dialog.returnValue = "";
    els.dialog.showModal();
  });
  els.dialog.addEventListener("close", () => {
    if (els.dialog.returnValue === "delete") deleteChat();
    else els.del.focus();
  });
  els.bannerAction.addEventListener("click", () => {
    if (state.bannerAction) state.bannerAction();
  });
  // The skip link moves focus to the message box without naming "message" in the address,
  // which names the open chat.
  document.querySelector(".skip-link")?.addEventListener("click", (event) => {
    event.preventDefault();
    els.message.focus();
  });
  // The hash edited by hand, or Back and Forward: open the chat it names.
  window.addEventListener("hashchange", async () => {
    const hash = window.location.hash.slice(1);
    if (hash && document.getElementById(hash)) {
      // A link to a part of this page: the chat stays open, and the address names it again.
      const url = state.sessionId ? `#${state.sessionId}` : window.location.pathname;
      window.history.replaceState(null, "", url);
      return;
    }
    const wanted = addressedChat();
    if (wanted === (state.sessionId || "")) return; // the page's own change of address
    if (wanted && !state.sessions.some((s) => s.id === wanted)) {
      try {
        await loadSessions(); // started in another tab, say
      } catch (err) {
        return handleError(err);
      }
      if (addressedChat() !== wanted) return; // moved on meanwhile: that change opens it
    }
    openAddressed(wanted);
  });
  // Signing out here leaves nothing of this account in the tab for whoever signs in next.
  document.querySelector("form.signout")?.addEventListener("submit", () => {
    state.signingOut = true;
    dropStored(() => true);
  });
  window.addEventListener("pagehide", () => {
    if (state.signingOut) return;
    const asked = ["signed-out", "stale"].includes(els.banner.dataset.kind);
    if (asked && !els.banner.hidden) keepDraft(); // the browser's own reload, say
  });
  window.addEventListener("offline", connectionLost);
  window.addEventListener("online", () => {
    if (state.offline) reconnect(0);
  });

  async function start() {
    restoreDraft();
    try {
      await loadSessions();
    } catch (err) {
      setLoading(false); // a send waiting is refused: no chat is open (the banner says why)
      return handleError(err);
    }
    forgetOthers();
    openAddressed(firstChat());
  }

  // A browser shared by several accounts, one after another in this tab: what the page
  // kept for another account (a draft, its chats' turn ids) goes, never to be shown here.
  function forgetOthers() {
    const mine = new Set(state.sessions.map((s) => TURN_KEY + s.id));
    dropStored(
      (key) =>
        (key.startsWith(DRAFT_PREFIX) && key !== DRAFT_KEY) ||
        (key.startsWith(TURN_KEY) && !mine.has(key)),
    );
  }

  // Remove what this page keeps in the tab's storage (its keys only) that ``unwanted`` names.
  function dropStored(unwanted) {
    try {
      for (const key of Object.keys(window.sessionStorage)) {
        if (key.startsWith("isolated-chat:") && unwanted(key)) {
          window.sessionStorage.removeItem(key);
        }
      }
    } catch {
      // Storage off: nothing was kept.
    }
  }

  // The chat a page opens first: the one its kept draft was typed in, else the one its
  // address names, else the newest.
  function firstChat() {
    if (state.draftChat !== null) return state.draftChat;
    return addressedChat() || (state.sessions[0] && state.sessions[0].id) || "";
  }

  // Open the chat ``wanted`` names: none, a new chat; one not (or no longer) the user's, said.
  function openAddressed(wanted) {
    if (!wanted) return newChat();
    if (state.sessions.some((s) => s.id === wanted)) return openSession(wanted);
    newChat();
    chatGone(wanted);
  }

  start();
})();
