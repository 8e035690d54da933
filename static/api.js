// The calls the page makes: POST /chat, answered with an event stream; GET
// /chat/streams/{id} to resume one after the last event seen; DELETE /chat/streams/{id} to
// stop one; GET /usage for what is left of the token budget.
//
// Errors before the stream are JSON {"detail": ...} with a status (401, 404, 413, 415, 422,
// 429, 503); they become a ChatHttpError. After the stream has started, failures arrive as an
// `error` event in the stream itself.

import { readEvents } from "./sse.js";

// Relative to the page, so a proxy that mounts the service under a prefix keeps working.
const CHAT_URL = new URL("chat", document.baseURI);

export class ChatHttpError extends Error {
  /**
   * @param {number} status
   * @param {string} detail  the server's explanation, as text
   * @param {number|null} retryAfter  seconds to wait, from Retry-After (429, 503)
   */
  constructor(status, detail, retryAfter) {
    super(`HTTP ${status}${detail ? `: ${detail}` : ""}`);
    this.name = "ChatHttpError";
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }

  static async from(response) {
    let detail = "";
    try {
      detail = describeDetail((await response.json()).detail);
    } catch {
      // Not JSON (a proxy's error page, say): the status says enough.
    }
    return new ChatHttpError(
      response.status,
      detail,
      parseRetryAfter(response.headers.get("Retry-After")),
    );
  }
}

/** FastAPI's 422 detail is a list of {loc, msg, type}; others are a string. */
function describeDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => (item && typeof item.msg === "string" ? item.msg : ""))
      .filter(Boolean)
      .join("; ");
  }
  return "";
}

/** Retry-After is delay-seconds or an HTTP-date (RFC 9110 section 10.2.3). */
export function parseRetryAfter(value, now = Date.now()) {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - now) / 1000));
}

/**
 * Send a message. Returns the stream's id (X-Stream-ID) and its events as {type, payload,
 * id}, payload being the parsed JSON data (or {} when an event's data is not JSON, so one
 * bad event cannot break the page).
 * @param {{message: string, conversationId: string, token: string, signal: AbortSignal}} request
 */
export async function openChat({ message, conversationId, token, signal }) {
  const response = await fetch(CHAT_URL, {
    method: "POST",
    headers: {
      Accept: "text/event-stream",
      Authorization: `Bearer ${token}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify({ message, conversation_id: conversationId }),
    cache: "no-store",
    signal,
  });
  if (!response.ok) throw await ChatHttpError.from(response);
  return { streamId: response.headers.get("X-Stream-ID") || "", events: parsedEvents(response.body) };
}

/**
 * Come back to a stream: the events after `lastEventId` (all of them when it is empty),
 * then the live rest.
 * @param {{streamId: string, lastEventId: string, token: string, signal: AbortSignal}} request
 */
export async function resumeChat({ streamId, lastEventId, token, signal }) {
  const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token}` };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const url = new URL(`chat/streams/${encodeURIComponent(streamId)}`, document.baseURI);
  const response = await fetch(url, { headers, cache: "no-store", signal });
  if (!response.ok) throw await ChatHttpError.from(response);
  return { streamId, events: parsedEvents(response.body) };
}

/** Stop a stream's generation, wherever it runs (its readers get `done` "cancelled"). */
export async function stopChat({ streamId, token }) {
  const url = new URL(`chat/streams/${encodeURIComponent(streamId)}`, document.baseURI);
  await fetch(url, { method: "DELETE", headers: { Authorization: `Bearer ${token}` } });
}

/**
 * Where the user stands against the token budget: {limit, used, remaining, reset_seconds}
 * (limit null when there is none), or null when the server could not say.
 */
export async function fetchUsage({ token }) {
  try {
    const response = await fetch(new URL("usage", document.baseURI), {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

/** A page of the caller's conversations, newest first: {conversations, next}. */
export async function listConversations({ token, cursor }) {
  const url = new URL("conversations", document.baseURI);
  if (cursor) url.searchParams.set("cursor", cursor);
  return getJson(url, token);
}

/** One conversation's messages: {id, messages: [{role, content}]}. */
export async function readConversation({ token, id }) {
  return getJson(new URL(`conversations/${encodeURIComponent(id)}`, document.baseURI), token);
}

/** Forget a conversation (204; 404 when it was gone already). */
export async function deleteConversation({ token, id }) {
  const url = new URL(`conversations/${encodeURIComponent(id)}`, document.baseURI);
  const response = await fetch(url, { method: "DELETE", headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok && response.status !== 404) throw await ChatHttpError.from(response);
}

async function getJson(url, token) {
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${token}` },
    cache: "no-store",
  });
  if (!response.ok) throw await ChatHttpError.from(response);
  return response.json();
}

async function* parsedEvents(body) {
  for await (const event of readEvents(body)) {
    let payload = {};
    try {
      const parsed = JSON.parse(event.data);
      if (parsed && typeof parsed === "object") payload = parsed;
    } catch {
      // Leave payload empty.
    }
    yield { type: event.event, payload, id: event.id };
  }
}
