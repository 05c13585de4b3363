// The chat page's wiring: the conversation list, the message view, the composer and the
// settings, over `chat.js` (the server) and `store.js` (the browser's storage). Replies are
// rendered with `markdown.js`, which never interprets HTML. One reply streams at a time.

import { ApiError, listModels, streamChat } from "./chat.js";
import { copyText, renderMarkdown } from "./markdown.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const button = (text, cls, onClick) => {
  const b = el("button", cls, text);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
};

let conv = null; // the open conversation
let controller = null; // the reply streaming now, if any
let settings = store.loadSettings();

// ---- status and errors -------------------------------------------------------------------

function status(text) {
  $("status").textContent = text;
}

function askForKey(message) {
  $("auth").hidden = false;
  $("auth-form").querySelector("label").textContent = message || "This server needs an API key";
  $("api-key").focus();
}

// ---- models ------------------------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  try {
    const models = await listModels();
    $("auth").hidden = true;
    select.replaceChildren(...models.map((m) => {
      const o = el("option", null, m.id);
      o.value = m.id;
      return o;
    }));
    const wanted = (conv && conv.model) || localStorage.getItem("slm.model");
    if (wanted && models.some((m) => m.id === wanted)) select.value = wanted;
    status(models.length ? "" : "The server has no chat model.");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) askForKey(e.message);
    else status(`Cannot list models: ${e.message}`);
  }
}

// ---- conversations -----------------------------------------------------------------------

function renderList() {
  const ul = $("conversations");
  ul.replaceChildren();
  for (const c of store.listConversations()) {
    const li = el("li", c.id === conv?.id ? "active" : "");
    li.dataset.id = c.id;
    const open = button(c.title || "Untitled", "title", () => openConversation(c.id));
    const rename = button("Rename", "small", () => {
      const t = prompt("Rename conversation", c.title);
      if (t !== null && t.trim()) {
        const target = c.id === conv?.id ? conv : c;
        target.title = t.trim();
        store.saveConversation(target);
        renderList();
      }
    });
    const del = button("Delete", "small danger", () => {
      if (!confirm(`Delete “${c.title}”?`)) return;
      store.deleteConversation(c.id);
      if (c.id === conv?.id) startConversation();
      renderList();
    });
    li.append(open, rename, del);
    ul.append(li);
  }
}

function startConversation() {
  stop();
  conv = store.newConversation($("model").value);
  $("system").value = "";
  renderMessages();
  renderList();
  $("input").focus();
}

function openConversation(id) {
  stop();
  const c = store.listConversations().find((x) => x.id === id);
  if (!c) return;
  conv = c;
  $("system").value = c.system || "";
  if (c.model && [...$("model").options].some((o) => o.value === c.model)) $("model").value = c.model;
  renderMessages();
  renderList();
  document.body.classList.remove("side-open");
}

function save(c = conv) {
  if (!c.messages.length) return;
  if (!store.saveConversation(c)) status("Browser storage is full: this conversation is not saved.");
  renderList();
}

// ---- messages ----------------------------------------------------------------------------

function prettyJson(text) {
  try {
    const v = JSON.parse(text);
    return typeof v === "object" && v !== null ? JSON.stringify(v, null, 2) : null;
  } catch {
    return null;
  }
}

function toolCallsJson(calls) {
  return JSON.stringify(
    calls.map((c) => ({ id: c.id, name: c.function.name, arguments: prettyJson(c.function.arguments) ? JSON.parse(c.function.arguments) : c.function.arguments })),
    null,
    2,
  );
}

function fillBody(body, m) {
  body.replaceChildren();
  if (m.role === "user") {
    body.append(el("p", "plain", m.content)); // what the user typed, exactly
    return;
  }
  if (m.reasoning) {
    const d = el("details", "reasoning");
    d.append(el("summary", null, "Reasoning"), el("p", "plain", m.reasoning));
    body.append(d);
  }
  const json = m.json_mode && !m.pending ? prettyJson(m.content) : null;
  body.append(renderMarkdown(json ? "```json\n" + json + "\n```" : m.content));
  if (m.tool_calls && m.tool_calls.length) {
    body.append(el("div", "label", "Tool calls"), renderMarkdown("```json\n" + toolCallsJson(m.tool_calls) + "\n```"));
  }
  if (m.error) {
    const e = el("div", "error");
    const what = [m.error.status && `HTTP ${m.error.status}`, m.error.type, m.error.code].filter(Boolean).join(" · ");
    e.append(el("strong", null, what ? `${what}: ` : "Error: "), document.createTextNode(m.error.message));
    body.append(e);
  }
}

function meta(m) {
  const s = m.stats;
  const parts = [];
  if (m.stopped) parts.push("stopped");
  if (s && s.ttft_ms !== null) parts.push(`${(s.ttft_ms / 1000).toFixed(2)} s to first token`);
  if (s && s.tokens_per_s) parts.push(`${s.tokens_per_s.toFixed(1)} tokens/s`);
  if (s && s.num_tokens) parts.push(`${s.num_tokens} tokens`);
  if (s && s.finish_reason && s.finish_reason !== "stop") parts.push(`finish: ${s.finish_reason}`);
  return parts.join(" · ");
}

function messageView(m, index) {
  const div = el("article", `msg ${m.role}`);
  div.dataset.index = index;
  div.dataset.state = m.pending ? "streaming" : m.error ? "error" : m.stopped ? "stopped" : "done";
  const body = el("div", "body");
  fillBody(body, m);
  const foot = el("div", "foot");
  foot.append(el("span", "meta", meta(m)));
  const last = index === conv.messages.length - 1;
  if (!m.pending && !controller) {
    if (m.role === "user") foot.append(button("Edit", "small edit", () => editMessage(index, div)));
    if (m.role === "assistant") {
      foot.append(button("Copy", "small copy-reply", (ev) => copyText(m.content, ev.target)));
      if (last) foot.append(button("Regenerate", "small regenerate", regenerate));
    }
  }
  div.append(body, foot);
  return div;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren(...conv.messages.map(messageView));
  if (!conv.messages.length) box.append(el("p", "empty", "Ask anything. Replies stream from this server; nothing leaves your network."));
  box.scrollTop = box.scrollHeight;
}

/// Redraws the streaming reply only, at most once a frame.
let frame = 0;
function renderStreaming() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const box = $("messages");
    const index = conv.messages.length - 1;
    const node = box.querySelector(`article[data-index="${index}"]`);
    if (!node) return renderMessages();
    const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    fillBody(node.querySelector(".body"), conv.messages[index]);
    if (stick) box.scrollTop = box.scrollHeight;
  });
}

function editMessage(index, node) {
  const m = conv.messages[index];
  const body = node.querySelector(".body");
  const area = el("textarea", "edit-area");
  area.value = m.content;
  area.rows = Math.min(12, m.content.split("\n").length + 1);
  const send = button("Send", "small primary", () => {
    if (!area.value.trim()) return;
    conv.messages = conv.messages.slice(0, index);
    conv.messages.push({ role: "user", content: area.value });
    save();
    generate();
  });
  const cancel = button("Cancel", "small", renderMessages);
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send.click();
    }
  });
  body.replaceChildren(area, send, cancel);
  area.focus();
}

function regenerate() {
  if (controller) return;
  while (conv.messages.length && conv.messages[conv.messages.length - 1].role === "assistant") conv.messages.pop();
  if (conv.messages.length) generate();
}

// ---- generation --------------------------------------------------------------------------

/// The request's sampling fields from the settings panel; throws on a malformed tools list.
function requestParams() {
  const p = {};
  const num = (v) => (v === "" || v === null || Number.isNaN(Number(v)) ? null : Number(v));
  if (num(settings.temperature) !== null) p.temperature = num(settings.temperature);
  if (num(settings.top_p) !== null) p.top_p = num(settings.top_p);
  if (num(settings.max_tokens) !== null) p.max_tokens = num(settings.max_tokens);
  if (num(settings.seed) !== null) p.seed = num(settings.seed);
  if (settings.json_mode) p.response_format = { type: "json_object" };
  if (settings.tools.trim()) {
    let tools;
    try {
      tools = JSON.parse(settings.tools);
    } catch (e) {
      throw new Error(`Tools is not valid JSON: ${e.message}`);
    }
    if (!Array.isArray(tools)) throw new Error("Tools must be a JSON array.");
    p.tools = tools;
  }
  return p;
}

function apiMessages() {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({ role: "system", content: system });
  for (const m of conv.messages) {
    if (m.error && !m.content && !(m.tool_calls && m.tool_calls.length)) continue; // a failed reply is not context
    const msg = { role: m.role, content: m.content };
    if (m.tool_calls && m.tool_calls.length) msg.tool_calls = m.tool_calls;
    out.push(msg);
  }
  return out;
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

async function generate() {
  let params;
  try {
    params = requestParams();
  } catch (e) {
    showSettingsError(e.message);
    return;
  }
  const c = conv; // the user may open another conversation while this reply streams
  c.model = $("model").value;
  c.system = $("system").value;
  const messages = apiMessages();
  const reply = { role: "assistant", content: "", pending: true, json_mode: !!settings.json_mode };
  c.messages.push(reply);
  const mine = (controller = new AbortController());
  setBusy(true);
  renderMessages();
  try {
    const r = await streamChat({
      model: c.model,
      messages,
      params,
      signal: mine.signal,
      onUpdate: (part) => {
        reply.content = part.content;
        reply.reasoning = part.reasoning;
        reply.tool_calls = part.tool_calls.filter(Boolean);
        if (conv === c) renderStreaming();
      },
    });
    reply.content = r.content;
    reply.reasoning = r.reasoning || undefined;
    reply.tool_calls = r.tool_calls.length ? r.tool_calls : undefined;
    reply.stats = { ttft_ms: r.ttft_ms, tokens_per_s: r.tokens_per_s, num_tokens: r.num_tokens, finish_reason: r.finish_reason };
  } catch (e) {
    if (e.name === "AbortError") {
      reply.stopped = true;
    } else {
      reply.error = { message: e.message, status: e.status || null, type: e.type || null, code: e.code || null };
      if (e instanceof ApiError && e.status === 401) askForKey(e.message);
    }
  } finally {
    delete reply.pending;
    if (controller === mine) controller = null;
    setBusy(false);
    save(c);
    if (conv === c) renderMessages();
  }
}

function stop() {
  if (controller) controller.abort();
}

function send() {
  const text = $("input").value;
  if (!text.trim() || controller) return;
  if (!$("model").value) {
    status("No model to send to.");
    return;
  }
  $("input").value = "";
  conv.messages.push({ role: "user", content: text });
  if (conv.title === "New chat") conv.title = text.trim().split("\n")[0].slice(0, 60);
  save();
  generate();
}

// ---- settings ----------------------------------------------------------------------------

const FIELDS = ["temperature", "top_p", "max_tokens", "seed"];

function showSettingsError(message) {
  const p = $("settings-error");
  p.textContent = message;
  p.hidden = !message;
  if (message) {
    $("settings").hidden = false;
    $("toggle-settings").setAttribute("aria-expanded", "true");
  }
}

function bindSettings() {
  for (const f of FIELDS) {
    $(f).value = settings[f];
    $(f).addEventListener("input", () => {
      settings[f] = $(f).value;
      store.saveSettings(settings);
    });
  }
  $("json_mode").checked = !!settings.json_mode;
  $("json_mode").addEventListener("change", () => {
    settings.json_mode = $("json_mode").checked;
    store.saveSettings(settings);
  });
  $("tools").value = settings.tools;
  $("tools").addEventListener("input", () => {
    settings.tools = $("tools").value;
    store.saveSettings(settings);
    showSettingsError("");
  });
  $("system").addEventListener("input", () => {
    conv.system = $("system").value;
    if (conv.messages.length) save();
  });
  $("toggle-settings").addEventListener("click", () => {
    const open = $("settings").hidden;
    $("settings").hidden = !open;
    $("toggle-settings").setAttribute("aria-expanded", String(open));
  });
  $("forget-key").addEventListener("click", () => {
    store.setApiKey("");
    loadModels();
  });
}

// ---- start -------------------------------------------------------------------------------

function exportAll() {
  const blob = new Blob([store.exportJson()], { type: "application/json" });
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = `slm-conversations-${new Date().toISOString().slice(0, 10)}.json`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function init() {
  bindSettings();
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && controller) {
      e.preventDefault();
      stop();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", startConversation);
  $("export").addEventListener("click", exportAll);
  $("open-side").addEventListener("click", () => document.body.classList.add("side-open"));
  $("close-side").addEventListener("click", () => document.body.classList.remove("side-open"));
  $("model").addEventListener("change", () => {
    localStorage.setItem("slm.model", $("model").value);
    if (conv) conv.model = $("model").value;
  });
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    store.setApiKey($("api-key").value.trim());
    $("api-key").value = "";
    loadModels();
  });
  const recent = store.listConversations()[0];
  conv = recent || store.newConversation("");
  $("system").value = conv.system || "";
  renderMessages();
  renderList();
  loadModels();
}

init();
