// Markdown for assistant replies: marked parses, DOMPurify sanitises, highlight.js colours
// code, and each code block gets a copy button.
//
// Replies are re-rendered as they stream, at most once per animation frame (the caller
// schedules that). Re-setting innerHTML each time would rebuild every code block, lose text
// selections and make long replies flicker, so renderMarkdown() patches instead: it compares
// each top-level block's sanitised HTML with what is on screen and replaces only the blocks
// that changed, which while streaming is nearly always just the last one.

import { Marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.js";
import hljs from "./vendor/highlight/highlight.min.js";
import { t } from "./i18n.js";

const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);

const markdown = new Marked({
  gfm: true,
  renderer: {
    // Raw HTML in a reply is shown as the text it is. Replies echo what users type and what a
    // model writes, and neither should add markup to the page; DOMPurify below would remove
    // scripts and handlers anyway, but escaping also keeps a harmless-looking <img src=x>
    // from making requests.
    html({ text, block }) {
      return block ? `<p class="raw-html">${escapeHtml(text.trimEnd())}</p>` : escapeHtml(text);
    },
    // Images become links: the page's CSP allows same-origin images only, so a remote image
    // would just be a blocked request and a console error.
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
  },
});

const PURIFY_CONFIG = {
  // marked's own output only: no forms, no embedded documents, no inline styles (which the
  // CSP would refuse anyway, with a console error).
  FORBID_TAGS: ["style", "form", "button", "textarea", "select", "img", "svg", "math"],
  FORBID_ATTR: ["style"],
  RETURN_DOM_FRAGMENT: true,
};

// Links in a reply open in a new tab (the chat would be lost otherwise), without giving the
// new page a handle on this one (https://owasp.org/www-community/attacks/Reverse_Tabnabbing).
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** Each rendered block's source HTML, to tell which blocks changed since the last render. */
const blockSource = new WeakMap();

/**
 * Render `text` as Markdown into `container`, replacing only the blocks that changed.
 * @param {HTMLElement} container
 * @param {string} text
 * @param {{final?: boolean}} [options] final: the reply is complete, so code blocks without a
 *   language are worth auto-detecting (too slow to repeat on every frame while streaming).
 */
export function renderMarkdown(container, text, { final = false } = {}) {
  const fragment = DOMPurify.sanitize(markdown.parse(text, { async: false }), PURIFY_CONFIG);
  const blocks = [...fragment.childNodes].filter(
    (node) => node.nodeType === Node.ELEMENT_NODE || node.textContent.trim() !== "",
  );
  const shown = [...container.childNodes];
  blocks.forEach((block, index) => {
    const source = block.nodeType === Node.ELEMENT_NODE ? block.outerHTML : block.textContent;
    const current = shown[index];
    if (current && blockSource.get(current) === source) return;
    const decorated = decorate(block);
    blockSource.set(decorated, source);
    if (current) current.replaceWith(decorated);
    else container.append(decorated);
  });
  for (const extra of shown.slice(blocks.length)) extra.remove();
  if (final) {
    for (const code of container.querySelectorAll("code[data-highlight='pending']")) {
      highlight(code, "", true);
    }
  }
}

/** Highlight code blocks in a freshly rendered block and give each a toolbar. */
function decorate(block) {
  if (block.nodeType !== Node.ELEMENT_NODE) return block;
  const pres = block.matches("pre") ? [block] : [...block.querySelectorAll("pre")];
  let result = block;
  for (const pre of pres) {
    const code = pre.querySelector("code");
    if (!code) continue;
    const lang = (code.className.match(/\blanguage-([\w+#.-]+)/) || [])[1] || "";
    highlight(code, lang, false);
    const wrapper = codeBlock(pre, lang);
    if (pre === block) result = wrapper;
  }
  return result;
}

function highlight(code, lang, autodetect) {
  const source = code.textContent;
  let html = null;
  if (lang && hljs.getLanguage(lang)) {
    html = hljs.highlight(source, { language: lang, ignoreIllegals: true }).value;
  } else if (autodetect) {
    const detected = hljs.highlightAuto(source);
    html = detected.value;
    if (detected.language) code.classList.add(`language-${detected.language}`);
  }
  code.classList.add("hljs");
  if (html === null) {
    code.dataset.highlight = "pending";
    return;
  }
  // highlight.js escapes the code it wraps in spans; sanitising again keeps the rule simple:
  // nothing reaches the DOM as HTML without passing DOMPurify.
  code.replaceChildren(DOMPurify.sanitize(html, { RETURN_DOM_FRAGMENT: true }));
  delete code.dataset.highlight;
}

function codeBlock(pre, lang) {
  const wrapper = document.createElement("div");
  wrapper.className = "code-block";
  const toolbar = document.createElement("div");
  toolbar.className = "code-toolbar";
  const label = document.createElement("span");
  label.className = "code-lang";
  label.textContent = lang;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy-button";
  button.textContent = t("copy");
  button.setAttribute("aria-label", t("copyCode", lang));
  toolbar.append(label, button);
  pre.replaceWith(wrapper);
  wrapper.append(toolbar, pre);
  return wrapper;
}

/** Copy a code block's text when its copy button is clicked (one listener for the page). */
export async function handleCopyClick(event) {
  const button = event.target.closest(".copy-button");
  if (!button) return;
  const code = button.closest(".code-block")?.querySelector("pre code");
  if (!code) return;
  const ok = await copyText(code.textContent);
  button.textContent = ok ? t("copied") : t("copyFailed");
  button.classList.toggle("copied", ok);
  clearTimeout(button.resetTimer);
  button.resetTimer = setTimeout(() => {
    button.textContent = t("copy");
    button.classList.remove("copied");
  }, 2000);
}

async function copyText(text) {
  try {
    // Only in secure contexts (https, localhost); elsewhere fall back to execCommand.
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "clipboard-buffer";
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

/** The reply as plain text, for the screen-reader announcement (no toolbar labels). */
export function plainText(container) {
  const copy = container.cloneNode(true);
  for (const extra of copy.querySelectorAll(".code-toolbar, .cursor")) extra.remove();
  return copy.textContent.replace(/\s+/g, " ").trim();
}
