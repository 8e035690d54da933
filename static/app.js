// The chat page: wires the composer, the message list and the token to POST /chat.
//
// Module map: sse.js parses the event stream, api.js makes the request, bubble.js builds
// the bubbles, markdown.js renders replies, token.js keeps the token, scroll.js follows the
// newest text, i18n.js holds the UI text.

import { applyTranslations, lang, t } from "./i18n.js";
import { ChatHttpError, openChat } from "./api.js";
import { AssistantMessage, addUserMessage } from "./bubble.js";
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

applyTranslations();
takeTokenFromUrl();

const tokenDialog = new TokenDialog($("tokenDialog"), {
  rejectedText: t("tokenRejected"),
  requiredText: t("tokenRequired"),
});
const follower = new ScrollFollower(messages, $("scrollButton"));

let conversationId = newConversationId();
/** The reply being streamed: its AbortController, or null when idle. */
let streaming = null;

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

if (!getToken()) tokenDialog.ask();
input.focus();

async function send() {
  const message = input.value.trim();
  if (!message || streaming) return;
  addUserMessage(messages, message);
  input.value = "";
  fitInput();
  follower.follow();

  const bubble = new AssistantMessage(messages, () => follower.update());
  const controller = new AbortController();
  streaming = controller;
  setStreaming(true);
  try {
    await converse(message, bubble, controller.signal);
  } finally {
    streaming = null;
    setStreaming(false);
  }
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
      const events = await openChat({ message, conversationId, token, signal });
      await showReply(events, bubble);
      return;
    } catch (error) {
      if (signal.aborted) {
        bubble.stop();
        announce(t("announceStopped"));
        return;
      }
      if (error instanceof ChatHttpError && error.status === 401) {
        // The token expired or was never good: ask again and resend the same message.
        clearToken();
        refused = true;
        token = await tokenDialog.ask({ rejected: true });
        continue;
      }
      fail(bubble, describeError(error));
      return;
    }
  }
}

async function showReply(events, bubble) {
  for await (const { type, payload } of events) {
    switch (type) {
      case "thinking":
        bubble.addStep(String(payload.step ?? ""));
        break;
      case "content":
        bubble.appendText(String(payload.text ?? ""));
        break;
      case "done":
        bubble.finish();
        announce(t("announceReply", bubble.plainText()));
        return;
      case "error":
        fail(bubble, payload.code === "shutdown" ? t("shutdown") : describeStreamError(payload));
        return;
      default:
        // "start", and event types added later: nothing to show.
        break;
    }
  }
  fail(bubble, t("interrupted"));
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
  streaming?.abort();
}

function newChat() {
  stop();
  for (const message of messages.querySelectorAll(".message:not(.welcome)")) message.remove();
  conversationId = newConversationId();
  follower.follow();
  input.focus();
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
