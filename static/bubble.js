// The chat bubbles. An assistant bubble is built as its reply streams in:
//
//   <div class="message assistant" role="article" aria-busy="true">
//     <details class="thinking">            collapsed; its summary shows the current step
//       <summary>…</summary><ol>steps</ol>  while waiting, then "Thought in N steps"
//     </details>
//     <div class="content markdown">…</div> the reply, re-rendered at most once per frame
//     <span class="cursor"></span>          blinks at the end of the text until the end
//   </div>

import { renderMarkdown, plainText } from "./markdown.js";
import { t } from "./i18n.js";

// Elements the cursor may descend into to reach the end of the text; it stops at the first
// inline element (a <strong>, a link), so it never lands inside inline code or a link.
const BLOCKS = new Set([
  "P", "H1", "H2", "H3", "H4", "H5", "H6", "UL", "OL", "LI", "BLOCKQUOTE",
  "TABLE", "THEAD", "TBODY", "TR", "TD", "TH", "DIV", "PRE",
]);

export function addUserMessage(messages, text) {
  const bubble = document.createElement("div");
  bubble.className = "message user";
  bubble.setAttribute("role", "article");
  bubble.setAttribute("aria-label", t("you"));
  bubble.textContent = text;
  messages.append(bubble);
  return bubble;
}

export class AssistantMessage {
  /**
   * @param {HTMLElement} messages  the #messages list to add the bubble to
   * @param {() => void} onUpdate   called after the bubble grew (to follow with the scroll)
   */
  constructor(messages, onUpdate) {
    this.onUpdate = onUpdate;
    this.text = "";
    this.steps = 0;
    this.frame = 0;
    this.ended = false;
    this.reconnectNote = null;

    this.el = document.createElement("div");
    this.el.className = "message assistant";
    this.el.setAttribute("role", "article");
    this.el.setAttribute("aria-label", t("assistant"));
    this.el.setAttribute("aria-busy", "true");

    this.thinking = document.createElement("details");
    this.thinking.className = "thinking live";
    this.summary = document.createElement("summary");
    this.summary.textContent = t("preparing");
    this.stepList = document.createElement("ol");
    this.stepList.className = "thinking-steps";
    this.thinking.append(this.summary, this.stepList);

    this.content = document.createElement("div");
    this.content.className = "content markdown";

    this.cursor = document.createElement("span");
    this.cursor.className = "cursor";
    this.cursor.setAttribute("aria-hidden", "true");

    this.el.append(this.thinking, this.content, this.cursor);
    messages.append(this.el);
    this.onUpdate();
  }

  addStep(step) {
    if (this.ended) return;
    this.steps += 1;
    const item = document.createElement("li");
    item.textContent = step;
    this.stepList.append(item);
    if (this.text === "") this.summary.textContent = step;
    this.onUpdate();
  }

  appendText(text) {
    if (this.ended || text === "") return;
    if (this.text === "") this.settleThinking();
    this.text += text;
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.render(false);
      });
    }
  }

  /** The reply is complete. */
  finish() {
    this.end();
  }

  /** The reply ended early: keep what arrived and say why underneath. */
  fail(message) {
    this.end();
    this.el.classList.add("error");
    this.note(t("errorPrefix") + message, "error-text");
  }

  /** The connection dropped, and the page is reconnecting (on), or has (off). */
  reconnecting(on) {
    if (on && !this.reconnectNote) {
      this.reconnectNote = document.createElement("p");
      this.reconnectNote.className = "reconnecting";
      this.reconnectNote.setAttribute("role", "status");
      this.reconnectNote.textContent = t("reconnecting");
      this.el.append(this.reconnectNote);
      this.onUpdate();
    } else if (!on && this.reconnectNote) {
      this.reconnectNote.remove();
      this.reconnectNote = null;
    }
  }

  /** The reader pressed Stop. */
  stop() {
    this.end();
    this.el.classList.add("stopped");
    this.note(t("stopped"), "stopped-text");
  }

  /** The reply as plain text, for announcing it. */
  plainText() {
    return plainText(this.content);
  }

  end() {
    if (this.ended) return;
    this.reconnecting(false);
    this.ended = true;
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.settleThinking();
    if (this.text) this.render(true);
    this.cursor.remove();
    this.el.setAttribute("aria-busy", "false");
    this.onUpdate();
  }

  /** Waiting is over: the thinking section keeps its steps under a summary, or goes. */
  settleThinking() {
    this.thinking.classList.remove("live");
    if (this.steps === 0) this.thinking.remove();
    else this.summary.textContent = t("thoughtSteps", this.steps);
  }

  note(text, className) {
    const p = document.createElement("p");
    p.className = className;
    p.textContent = text;
    this.el.append(p);
    this.onUpdate();
  }

  render(final) {
    renderMarkdown(this.content, this.text, { final });
    if (!final) this.placeCursor();
    this.onUpdate();
  }

  /** Put the cursor at the end of the text: inside the last paragraph, item or code line. */
  placeCursor() {
    this.cursor.remove();
    let target = this.content;
    for (;;) {
      const last = target.lastElementChild;
      const codeLine = last?.tagName === "CODE" && target.tagName === "PRE";
      if (!last || !(BLOCKS.has(last.tagName) || codeLine)) break;
      target = last;
    }
    if (target === this.content) this.content.after(this.cursor);
    else target.append(this.cursor);
  }
}
