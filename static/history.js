// The conversation list: the caller's conversations (GET /conversations, newest first),
// each opened with a click or Enter and deleted after a confirmation; a sidebar on wide
// screens, a drawer (the header's Conversations button) on phones.

import { deleteConversation, listConversations } from "./api.js";
import { t } from "./i18n.js";

export class ConversationList {
  /**
   * @param {{sidebar: HTMLElement, list: HTMLElement, empty: HTMLElement, more: HTMLElement,
   *   toggle: HTMLElement, close: HTMLElement, dialog: HTMLDialogElement}} elements
   * @param {{getToken: () => string, onOpen: (item) => void, onDeleted: (id) => void}} hooks
   */
  constructor(elements, hooks) {
    Object.assign(this, elements);
    this.hooks = hooks;
    this.activeId = null;
    this.next = null;
    this.toggle.addEventListener("click", () => this.setOpen(!this.isOpen()));
    this.close.addEventListener("click", () => {
      this.setOpen(false);
      this.toggle.focus();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.isOpen() && !this.dialog.open) {
        event.preventDefault();
        this.setOpen(false);
        this.toggle.focus();
      }
    });
    this.more.addEventListener("click", () => this.load(this.next));
  }

  isOpen() {
    return this.sidebar.classList.contains("open");
  }

  /** The drawer (phones); wide screens show the list always. */
  setOpen(open) {
    this.sidebar.classList.toggle("open", open);
    this.toggle.setAttribute("aria-expanded", String(open));
    if (open) this.list.querySelector("button")?.focus();
  }

  /** Read the list again from its first page, marking `activeId`; the ids listed. */
  async refresh(activeId = this.activeId) {
    this.activeId = activeId;
    return this.load(null, true);
  }

  async load(cursor, fresh = false) {
    const token = this.hooks.getToken();
    if (!token) return [];
    let page;
    try {
      page = await listConversations({ token, cursor });
    } catch {
      return []; // the list is a convenience: the chat works without it
    }
    if (fresh) this.list.replaceChildren();
    for (const item of page.conversations) this.list.append(this.row(item));
    this.next = page.next || null;
    this.more.hidden = !this.next;
    this.empty.hidden = this.list.children.length > 0;
    return page.conversations.map((item) => item.id);
  }

  row(item) {
    const li = document.createElement("li");
    li.className = "conversation-item";
    li.dataset.id = item.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conversation-open";
    open.textContent = item.title || item.id;
    open.title = open.textContent; // the whole title, where the list cuts it short
    if (item.id === this.activeId) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => {
      this.activeId = item.id;
      for (const other of this.list.querySelectorAll("[aria-current]")) {
        other.removeAttribute("aria-current");
      }
      open.setAttribute("aria-current", "true");
      this.setOpen(false);
      this.hooks.onOpen(item);
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "conversation-delete";
    remove.textContent = "×";
    remove.setAttribute("aria-label", t("deleteNamed", open.textContent));
    remove.addEventListener("click", () => this.confirmDelete(item, li));
    li.append(open, remove);
    return li;
  }

  /** Ask first (a dialog of the page's own, never window.confirm), then delete. */
  confirmDelete(item, li) {
    const dialog = this.dialog;
    dialog.querySelector("#deleteDialogText").textContent = t("deleteText", item.title || item.id);
    const cancel = dialog.querySelector("#deleteCancel");
    const onCancel = () => dialog.close("cancel");
    cancel.addEventListener("click", onCancel, { once: true });
    dialog.addEventListener(
      "close",
      async () => {
        cancel.removeEventListener("click", onCancel);
        if (dialog.returnValue !== "delete") {
          li.querySelector(".conversation-delete")?.focus();
          return;
        }
        try {
          await deleteConversation({ token: this.hooks.getToken(), id: item.id });
        } catch {
          return;
        }
        const next = li.nextElementSibling || li.previousElementSibling;
        li.remove();
        this.empty.hidden = this.list.children.length > 0;
        (next?.querySelector("button") || this.toggle).focus();
        this.hooks.onDeleted(item.id);
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    cancel.focus();
  }
}
