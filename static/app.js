// The chat page: wires the composer, the message list and the token to POST /chat.
//
// Module map: sse.js parses the event stream, api.js makes the requests, bubble.js builds
// the bubbles, markdown.js renders replies, token.js keeps the token, scroll.js follows the
// newest text, i18n.js holds the UI text.
//
// A reply outlives its connection: when the connection drops mid-reply the bubble says so
// and the page comes back to the stream after the last event it showed (GET
// /chat/streams/{id} with Last-Event-ID); a reload mid-reply finds the stream in
// sessionStorage and replays it into a new bubble from its start; Stop stops the
// generation itself (DELETE /chat/streams/{id}), not just this page's reading of it.
//
// With a token budget (CHAT_TOKEN_BUDGET) the line under the composer says what is left
// (GET /usage, after each reply), and a request the budget cannot hold says when it renews.

import { applyTranslations, lang, t } from "./i18n.js";
import {
  ChatHttpError,
  fetchUsage,
  openChat,
  readConversation,
  resumeChat,
  stopChat,
} from "./api.js";
import { startSignIn } from "./auth.js";
import { AssistantMessage, addUserMessage } from "./bubble.js";
import { ConversationList } from "./history.js";
import { handleCopyClick } from "./markdown.js";
import { ScrollFollower } from "./scroll.js";
import { TokenDialog, clearToken, getToken, takeTokenFromUrl } from "./token.js";

const $ = (id) => document.getElementById(id);
const messages = $("messages");
const composer = $("composer");
const input = $("messageInput");
const sendButton = $("sendButton");
const stopButton = $("stopButton");
const announcer = $("announcer");
const budgetStatus = $("budgetStatus");

applyTranslations();
takeTokenFromUrl();
/** The OpenID sign-in (auth.js), once `ready` has found whether there is one. */
let signIn = null;

const tokenDialog = new TokenDialog($("tokenDialog"), {
  rejectedText: t("tokenRejected"),
  requiredText: t("tokenRequired"),
  malformedText: t("tokenMalformed"),
});
// Whether the person has begun using the page (a key, a click) since it loaded. The page
// asks for a token on its own only before that: a dialog that opened once the start-up's
// requests came back took the keys of a message being typed (and its Enter kept the message
// as the "token"), while an Escape meant for it had come too early to close it. Once they
// have begun, the page asks when it needs one: when a message is sent.
let begun = false;
for (const type of ["keydown", "pointerdown"]) {
  addEventListener(type, () => (begun = true), { capture: true, once: true });
}
const follower = new ScrollFollower(messages, $("scrollButton"));
const conversations = new ConversationList(
  {
    sidebar: $("sidebar"),
    list: $("conversationList"),
    empty: $("historyEmpty"),
    more: $("moreHistoryButton"),
    toggle: $("historyButton"),
    close: $("closeHistoryButton"),
    dialog: $("deleteDialog"),
  },
  { getToken, onOpen: openConversation, onDeleted: (id) => id === conversationId && newChat() },
);

// What survives a reload of this tab: the conversation, and the reply still streaming.
const SAVED = "chat-service.active";
const saved = readSaved();
let conversationId = saved?.conversationId || newConversationId();
/** Whether the server keeps turns of it: a reply ended in it, or it was opened from the list. */
let stored = Boolean(saved?.stored);
/** The reply being streamed: its AbortController, or null when idle. */
let streaming = null;
/** Its stream id and the last event shown, to come back to it. */
let active = null;
// Waits before each attempt to come back to a dropped stream (the server keeps it for
// CHAT_RESUME_WINDOW, 30 s by default).
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000, 8000];

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

input.addEventListener("keydown", (event) => {
  // Enter sends and Shift+Enter makes a new line; Enter that confirms an IME composition
  // (Chinese, Japanese input) must do neither (keyCode 229 covers Safari, where
  // isComposing is already false on that keydown).
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    send();
  } else if (event.key === "Escape" && streaming) {
    event.preventDefault();
    stop();
  }
});
input.addEventListener("input", fitInput);

stopButton.addEventListener("click", stop);
$("newChatButton").addEventListener("click", newChat);
$("tokenButton").addEventListener("click", () => tokenDialog.ask());
messages.addEventListener("click", handleCopyClick);

input.focus();
// The listeners above are in place at once; what needs the network comes after, and a
// message sent meanwhile waits for it.
const ready = start();

async function start() {
  // With an OpenID provider (GET /auth/config) people sign in there instead of pasting a
  // token; a page opened without a session leaves for the provider's sign-in at once.
  // A provider that cannot be reached leaves the page where it was before: a pasted token.
  signIn = await startSignIn().catch(() => null);
  if (signIn) {
    const signedIn = await signIn.resume();
    $("tokenButton").hidden = true;
    signIn.onChange = showSignedIn;
    $("signOutButton").addEventListener("click", () => signIn.signOut());
    showSignedIn();
    if (!signedIn) {
      await signIn.signIn();
      return;
    }
    showBudget();
  } else if (!getToken()) {
    if (!begun && !input.value) tokenDialog.ask();
  } else showBudget();
  // After a reload the open conversation is shown again, when it has turns (a new one has
  // nothing to show, and asking for it would only be a 404); the list's first page may
  // not reach it.
  const listed = await conversations.refresh(conversationId);
  if (stored || listed.includes(conversationId)) {
    await showConversation(conversationId);
  }
  if (saved?.streamId) reopen(saved);
  else save(null);
}

async function send() {
  await ready;
  const message = input.value.trim();
  if (!message || streaming) return;
  addUserMessage(messages, message);
  input.value = "";
  fitInput();
  follower.follow();

  const bubble = new AssistantMessage(messages, () => follower.update());
  await streamInto(bubble, (signal) => converse(message, bubble, signal));
}

/** A reply that was streaming when the tab reloaded: show it again, from its start. */
async function reopen({ streamId, message }) {
  addUserMessage(messages, message);
  const bubble = new AssistantMessage(messages, () => follower.update());
  active = { streamId, lastEventId: "", message };
  await streamInto(bubble, async (signal) => {
    try {
      await comeBack(bubble, signal, { fromStart: true });
    } catch (error) {
      if (!signal.aborted) throw error;
      bubble.stop();
      announce(t("announceStopped"));
    }
  });
}

async function streamInto(bubble, run) {
  const id = conversationId;
  const controller = new AbortController();
  streaming = controller;
  setStreaming(true);
  try {
    await run(controller.signal);
  } finally {
    // A reply was streamed in it: its turn is kept (unless another conversation is open now).
    if (active && conversationId === id) stored = true;
    streaming = null;
    active = null;
    save(null);
    setStreaming(false);
    showBudget();
    conversations.refresh(conversationId);
  }
}

/** A conversation from the list: its messages shown, and the next message continues it. */
async function openConversation({ id, title }) {
  if (id === conversationId && !streaming) return;
  stop();
  clearMessages();
  conversationId = id;
  stored = true;
  save(null);
  await showConversation(id);
  announce(t("announceOpened", title || id));
  input.focus();
}

/** The stored turns of `id` in the message list (none when it is new or gone). */
async function showConversation(id) {
  const token = getToken();
  if (!token) return; // nothing to ask with
  let history;
  try {
    history = await readConversation({ token, id });
  } catch {
    return; // new, expired or deleted: the list shows nothing of it
  }
  for (const { role, content } of history.messages) {
    if (role === "user") {
      addUserMessage(messages, content);
    } else {
      const bubble = new AssistantMessage(messages, () => follower.update());
      bubble.appendText(content);
      bubble.finish();
    }
  }
  follower.follow();
}

function clearMessages() {
  for (const message of messages.querySelectorAll(".message:not(.welcome)")) message.remove();
}

/** Who is signed in, in the header, with the button that signs them out. */
function showSignedIn() {
  const session = signIn?.session;
  $("userName").textContent = session ? t("signedInAs", session.name) : "";
  $("userName").hidden = !session;
  $("signOutButton").hidden = !session;
}

/** What is left of the token budget, under the composer; nothing when there is none. */
async function showBudget() {
  const token = getToken();
  const usage = token ? await fetchUsage({ token }) : null;
  if (!usage || typeof usage.limit !== "number") {
    budgetStatus.hidden = true;
    return;
  }
  budgetStatus.textContent = t("budgetLeft", usage.remaining, usage.limit, retryTime(usage.reset_seconds));
  budgetStatus.classList.toggle("exhausted", usage.remaining <= 0);
  budgetStatus.hidden = false;
}

async function converse(message, bubble, signal) {
  let token = getToken() || (await tokenDialog.ask());
  let refused = false;
  for (;;) {
    if (!token) {
      fail(bubble, refused ? t("http401") : t("noToken"));
      return;
    }
    try {
      const { streamId, events } = await openChat({ message, conversationId, token, signal });
      active = { streamId, lastEventId: "", message };
      save(active);
      if (await showReply(events, bubble)) return;
      await comeBack(bubble, signal); // the connection dropped mid-reply
      return;
    } catch (error) {
      if (signal.aborted) {
        bubble.stop();
        announce(t("announceStopped"));
        return;
      }
      if (error instanceof ChatHttpError && error.status === 401) {
        // The token expired or was never good: renew it (or ask again) and resend.
        clearToken();
        refused = true;
        if (signIn) {
          token = await signIn.renew();
          if (!token) {
            await signIn.signIn(); // the conversation is kept for the page's return
            return;
          }
        } else {
          token = await tokenDialog.ask({ rejected: true });
        }
        continue;
      }
      fail(bubble, describeError(error));
      return;
    }
  }
}

/**
 * Show events in the bubble until the reply ends; false if the connection dropped first
 * (the reply may still be going on at the server: come back to it).
 */
async function showReply(events, bubble) {
  try {
    for await (const event of events) {
      if (showEvent(event, bubble)) return true;
    }
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    return false; // a network error mid-stream
  }
  return false;
}

/** One event into the bubble; true once it was the last. */
function showEvent({ type, payload, id }, bubble) {
  if (active && id) active.lastEventId = id;
  bubble.reconnecting(false);
  switch (type) {
    case "thinking":
      bubble.addStep(String(payload.step ?? ""));
      break;
    case "content":
      bubble.appendText(String(payload.text ?? ""));
      break;
    case "done":
      if (payload.reason === "cancelled") {
        bubble.stop();
        announce(t("announceStopped"));
      } else {
        bubble.finish();
        announce(t("announceReply", bubble.plainText()));
      }
      return true;
    case "error":
      fail(bubble, payload.code === "shutdown" ? t("shutdown") : describeStreamError(payload));
      return true;
    default:
      // "start", and event types added later: nothing to show.
      return false;
  }
}

/**
 * Come back to the active stream after the last event shown, until it ends, waiting a
 * little longer before each attempt; the bubble says it is reconnecting meanwhile.
 */
async function comeBack(bubble, signal, { fromStart = false } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    if (!fromStart || attempt > 0) {
      bubble.reconnecting(true);
      if (attempt >= RECONNECT_DELAYS_MS.length) break;
      await sleep(RECONNECT_DELAYS_MS[attempt], signal);
    }
    const token = getToken();
    if (!token || !active?.streamId) break; // nothing to come back to
    try {
      const { events } = await resumeChat({ ...active, token, signal });
      if (await showReply(events, bubble)) return;
    } catch (error) {
      if (signal.aborted) throw error;
      if (error instanceof ChatHttpError) break; // 404: gone (expired, or never ours)
    }
  }
  fail(bubble, t("interrupted"));
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("stopped", "AbortError"));
    });
  });
}

function describeStreamError({ code, message }) {
  return typeof message === "string" && message ? message : t("streamError", code ?? "error");
}

function describeError(error) {
  if (!(error instanceof ChatHttpError)) return t("network");
  switch (error.status) {
    case 413:
      return t("http413");
    case 415:
      return t("http415");
    case 422:
      return `${t("http422")}${error.detail ? `: ${error.detail}` : ""}.`;
    case 429:
      if (error.detail.startsWith("token budget")) {
        return t("budgetOut", retryTime(error.retryAfter ?? 60));
      }
      if (error.retryAfter === null) return t("http429NoTime");
      return t("http429", error.retryAfter, retryTime(error.retryAfter));
    case 503:
      return t("http503");
    default:
      return t("httpOther", error.status);
  }
}

function retryTime(seconds) {
  return new Date(Date.now() + seconds * 1000).toLocaleTimeString(lang);
}

function fail(bubble, text) {
  bubble.fail(text);
  announce(t("errorPrefix") + text);
}

function stop() {
  if (active?.streamId) {
    const token = getToken();
    if (token) stopChat({ streamId: active.streamId, token }).catch(() => {});
  }
  streaming?.abort();
}

function newChat() {
  stop();
  clearMessages();
  conversationId = newConversationId();
  stored = false;
  conversations.refresh(conversationId);
  save(null);
  follower.follow();
  input.focus();
}

/** Keep the conversation, and the reply still streaming (or none), for a reload. */
function save(stream) {
  const value = { conversationId, stored };
  if (stream) Object.assign(value, { streamId: stream.streamId, message: stream.message });
  try {
    sessionStorage.setItem(SAVED, JSON.stringify(value));
  } catch {
    // Storage full or denied: a reload then starts afresh.
  }
}

function readSaved() {
  try {
    const value = JSON.parse(sessionStorage.getItem(SAVED) || "null");
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

function setStreaming(on) {
  sendButton.disabled = on;
  stopButton.hidden = !on;
  messages.setAttribute("aria-busy", String(on));
}

function announce(text) {
  // Clear first so that the same text twice in a row is still announced.
  announcer.textContent = "";
  setTimeout(() => {
    announcer.textContent = text;
  }, 50);
}

/** Grow the textarea with its text, up to its CSS max-height. (The CSP forbids style
 * attributes in HTML, not styles set from a script.) */
function fitInput() {
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight}px`;
}

function newConversationId() {
  // randomUUID exists only in secure contexts (https, localhost); a plain-http deployment
  // reached by IP gets the same RFC 9562 version-4 UUID from getRandomValues.
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  const part = (start, end) => hex.slice(start, end);
  return `${part(0, 8)}-${part(8, 12)}-${part(12, 16)}-${part(16, 20)}-${part(20)}`;
}
