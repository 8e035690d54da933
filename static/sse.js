// Server-Sent Events parser for a fetch() body.
//
// EventSource cannot send an Authorization header or a POST body, so the page reads the
// stream itself. Network chunks do not respect event boundaries: one read can end inside an
// event, inside a line, between the \r and \n of a CRLF, or inside a multi-byte UTF-8
// character. SSEParser keeps whatever is incomplete until the next chunk, so every event comes
// out whole. It follows the WHATWG "event stream interpretation" algorithm:
// https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
//   - lines end in CRLF, LF or CR; a blank line dispatches the event;
//   - a line starting with ":" is a comment (the service's ": ping" keep-alives);
//   - "field: value" drops one space after the colon; a line without a colon is a field name
//     with an empty value; unknown fields are ignored;
//   - "data" lines are joined with "\n"; an event with no data is not dispatched;
//   - "id" sets the last event id, which persists across events (and ignores values with NUL);
//   - "retry" takes digits only;
//   - an unfinished event at end of stream is discarded.
// The one deviation: events are returned to the caller rather than dispatched on a target.

/**
 * @typedef {object} SSEEvent
 * @property {string} event   the event type ("message" when the stream names none)
 * @property {string} data    the data lines joined with "\n"
 * @property {string} id      the last event id seen so far on this stream
 * @property {number|undefined} retry  the reconnection time, if the stream set one
 */

export class SSEParser {
  /** @param {{onComment?: (text: string) => void}} [options] */
  constructor({ onComment } = {}) {
    this._onComment = onComment;
    // {stream: true} holds back a trailing partial UTF-8 sequence until the next chunk;
    // the default fatal: false turns invalid bytes into U+FFFD instead of throwing.
    this._decoder = new TextDecoder("utf-8");
    this._buffer = "";
    this._data = [];
    this._hasData = false;
    this._type = "";
    this._lastId = "";
    this._retry = undefined;
  }

  /**
   * Feed one chunk of the body and return the events it completed.
   * @param {Uint8Array|string} chunk
   * @returns {SSEEvent[]}
   */
  push(chunk) {
    this._buffer +=
      typeof chunk === "string" ? chunk : this._decoder.decode(chunk, { stream: true });
    return this._drain(false);
  }

  /**
   * Signal the end of the body. Per the spec, whatever was not closed by a blank line (an
   * unfinished event, a last line without a terminator) is discarded.
   * @returns {SSEEvent[]}
   */
  end() {
    this._buffer += this._decoder.decode();
    const events = this._drain(true);
    this._resetEvent();
    return events;
  }

  _drain(atEnd) {
    const events = [];
    const buffer = this._buffer;
    let start = 0;
    for (;;) {
      const lf = buffer.indexOf("\n", start);
      const cr = buffer.indexOf("\r", start);
      let end;
      let next;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        // A CR at the very end may be the first half of a CRLF split across chunks.
        if (cr === buffer.length - 1 && !atEnd) break;
        end = cr;
        next = buffer[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else if (lf !== -1) {
        end = lf;
        next = lf + 1;
      } else {
        break;
      }
      const event = this._line(buffer.slice(start, end));
      if (event) events.push(event);
      start = next;
    }
    this._buffer = atEnd ? "" : buffer.slice(start);
    return events;
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line.startsWith(":")) {
      this._onComment?.(line.slice(1).replace(/^ /, ""));
      return null;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this._type = value;
        break;
      case "data":
        this._data.push(value);
        this._hasData = true;
        break;
      case "id":
        if (!value.includes("\0")) this._lastId = value;
        break;
      case "retry":
        if (/^\d+$/.test(value)) this._retry = Number(value);
        break;
      default:
        break;
    }
    return null;
  }

  _dispatch() {
    if (!this._hasData) {
      this._resetEvent();
      return null;
    }
    const event = {
      event: this._type || "message",
      data: this._data.join("\n"),
      id: this._lastId,
      retry: this._retry,
    };
    this._resetEvent();
    return event;
  }

  _resetEvent() {
    this._data = [];
    this._hasData = false;
    this._type = "";
  }
}

/**
 * Read a fetch() response body and yield its events as they complete.
 * Cancelling (abort signal, or breaking out of the loop) releases the reader.
 * @param {ReadableStream<Uint8Array>} body
 * @param {{onComment?: (text: string) => void}} [options]
 * @returns {AsyncGenerator<SSEEvent>}
 */
export async function* readEvents(body, options) {
  const parser = new SSEParser(options);
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield* parser.push(value);
    }
    yield* parser.end();
  } finally {
    // Stops the download if the consumer stopped early; harmless once the body is done.
    reader.cancel().catch(() => {});
  }
}
