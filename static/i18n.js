// UI text in English and Chinese, chosen by the browser's language (zh* gets Chinese).
// index.html carries the English text so the page reads sensibly before this runs; elements
// marked data-i18n (text), data-i18n-placeholder and data-i18n-label (aria-label) are
// translated by applyTranslations().

const EN = {
  title: "AI Chat",
  skipToInput: "Skip to message input",
  changeToken: "Token",
  signOut: "Sign out",
  history: "Conversations",
  closeHistory: "Close the list",
  historyEmpty: "No conversations yet.",
  moreHistory: "Older conversations",
  deleteTitle: "Delete this conversation?",
  deleteText: (title) => `“${title}” and its messages will be gone for good.`,
  delete: "Delete",
  deleteNamed: (title) => `Delete “${title}”`,
  announceOpened: (title) => `Opened “${title}”.`,
  announceDeleted: "Conversation deleted.",
  signedInAs: (name) => `Signed in as ${name}`,
  newChat: "New chat",
  conversation: "Conversation",
  welcome: "Hello! I'm the AI assistant. What would you like to talk about?",
  jumpToLatest: "↓ Latest",
  messageLabel: "Message",
  placeholder: "Type a message...",
  send: "Send",
  stop: "Stop",
  hint: "Enter to send, Shift+Enter for a new line",
  tokenTitle: "Access token",
  tokenText: "This chat needs an access token. Paste the bearer token you were given.",
  tokenRejected: "The server did not accept this token (it may have expired). Enter a valid one.",
  tokenRequired: "Enter a token.",
  tokenMalformed: "That is not a token: a token is three parts joined by dots (xxxxx.yyyyy.zzzzz).",
  tokenLabel: "Token",
  cancel: "Cancel",
  save: "Save",
  you: "You",
  assistant: "Assistant",
  preparing: "Preparing a reply...",
  thinking: "Thinking",
  thoughtSteps: (n) => (n === 1 ? "Thought in 1 step" : `Thought in ${n} steps`),
  stopped: "Stopped.",
  reconnecting: "Connection lost. Reconnecting...",
  errorPrefix: "Sorry, something went wrong: ",
  network: "could not reach the server.",
  interrupted: "the connection closed before the reply finished.",
  noToken: "no access token, so the message was not sent.",
  http401: "the access token was not accepted.",
  http413: "the message is too large.",
  http415: "the request was not sent as JSON.",
  http422: "the message was not accepted",
  http429: (seconds, time) =>
    `too many requests. Try again in ${seconds} s (at ${time}).`,
  http429NoTime: "too many requests. Try again in a moment.",
  budgetOut: (time) =>
    `you have used the tokens you may use for now. More become available at ${time}.`,
  budgetLeft: (remaining, limit, time) =>
    `${remaining.toLocaleString("en")} of ${limit.toLocaleString("en")} tokens left, renewed at ${time}`,
  http503: "the service is unavailable right now. Try again shortly.",
  httpOther: (status) => `the server answered ${status}.`,
  shutdown: "the server restarted during the reply. Send the message again.",
  streamError: (code) => `the reply failed (${code}).`,
  copy: "Copy",
  copyCode: (lang) => (lang ? `Copy ${lang} code` : "Copy code"),
  copied: "Copied",
  copyFailed: "Copy failed",
  announceReply: (text) => `Reply: ${text}`,
  announceStopped: "Reply stopped.",
};

const ZH = {
  title: "AI 聊天",
  skipToInput: "跳到输入框",
  changeToken: "令牌",
  signOut: "退出登录",
  history: "会话",
  closeHistory: "关闭列表",
  historyEmpty: "还没有会话。",
  moreHistory: "更早的会话",
  deleteTitle: "删除这个会话？",
  deleteText: (title) => `“${title}”及其所有消息将被永久删除。`,
  delete: "删除",
  deleteNamed: (title) => `删除“${title}”`,
  announceOpened: (title) => `已打开“${title}”。`,
  announceDeleted: "会话已删除。",
  signedInAs: (name) => `已登录：${name}`,
  newChat: "新对话",
  conversation: "对话",
  welcome: "你好！我是 AI 助手，今天想聊什么呢？",
  jumpToLatest: "↓ 最新",
  messageLabel: "消息",
  placeholder: "输入消息...",
  send: "发送",
  stop: "停止",
  hint: "Enter 发送，Shift+Enter 换行",
  tokenTitle: "访问令牌",
  tokenText: "使用聊天需要访问令牌。请粘贴你获得的 Bearer 令牌。",
  tokenRejected: "服务器未接受此令牌（可能已过期）。请输入有效的令牌。",
  tokenRequired: "请输入令牌。",
  tokenMalformed: "这不是令牌：令牌由点连接的三部分组成（xxxxx.yyyyy.zzzzz）。",
  tokenLabel: "令牌",
  cancel: "取消",
  save: "保存",
  you: "你",
  assistant: "助手",
  preparing: "准备回复...",
  thinking: "思考中",
  thoughtSteps: (n) => `思考了 ${n} 步`,
  stopped: "已停止。",
  reconnecting: "连接中断，正在重新连接……",
  errorPrefix: "抱歉，出错了：",
  network: "无法连接到服务器。",
  interrupted: "回复完成前连接已断开。",
  noToken: "没有访问令牌，消息未发送。",
  http401: "访问令牌未被接受。",
  http413: "消息太大。",
  http415: "请求不是 JSON 格式。",
  http422: "消息未被接受",
  http429: (seconds, time) => `请求过于频繁，请在 ${seconds} 秒后（${time}）重试。`,
  http429NoTime: "请求过于频繁，请稍后重试。",
  budgetOut: (time) => `您目前可用的 token 已用完，${time} 后会恢复。`,
  budgetLeft: (remaining, limit, time) =>
    `剩余 ${remaining.toLocaleString("zh")} / ${limit.toLocaleString("zh")} 个 token，${time} 重置`,
  http503: "服务暂时不可用，请稍后重试。",
  httpOther: (status) => `服务器返回 ${status}。`,
  shutdown: "回复过程中服务器重启了，请重新发送。",
  streamError: (code) => `回复失败（${code}）。`,
  copy: "复制",
  copyCode: (lang) => (lang ? `复制 ${lang} 代码` : "复制代码"),
  copied: "已复制",
  copyFailed: "复制失败",
  announceReply: (text) => `回复：${text}`,
  announceStopped: "回复已停止。",
};

function pickLanguage() {
  const preferred = navigator.languages?.[0] || navigator.language || "en";
  return preferred.toLowerCase().startsWith("zh") ? "zh-CN" : "en";
}

export const lang = pickLanguage();
const strings = lang === "zh-CN" ? ZH : EN;

/** The UI text for key; keys whose text depends on values take them as arguments. */
export function t(key, ...args) {
  const value = strings[key] ?? EN[key];
  if (value === undefined) throw new Error(`no UI text for ${key}`);
  return typeof value === "function" ? value(...args) : value;
}

export function applyTranslations(root = document) {
  document.documentElement.lang = lang;
  document.title = t("title");
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
}
