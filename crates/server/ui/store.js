// What the page keeps in the browser's localStorage: conversations (each under its own key,
// so one long chat does not rewrite the others), the generation settings, and the API key.
// Nothing leaves the browser except the requests the page makes to this server.

const PREFIX = "slm.conversation.";
const SETTINGS = "slm.settings";
const KEY = "slm.apiKey";

export const DEFAULT_SETTINGS = { temperature: 0.7, top_p: 0.95, max_tokens: "", seed: "", json_mode: false, tools: "" };

function read(key, fallback) {
  try {
    const v = localStorage.getItem(key);
    return v === null ? fallback : JSON.parse(v);
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false; // storage full or disabled: the chat goes on, unsaved
  }
}

export function newConversation(model) {
  const now = Date.now();
  return { id: `${now.toString(36)}${Math.random().toString(36).slice(2, 8)}`, title: "New chat", created: now, updated: now, model, system: "", messages: [] };
}

/// Every saved conversation, the most recently used first.
export function listConversations() {
  const out = [];
  for (let i = 0; i < localStorage.length; i++) {
    const k = localStorage.key(i);
    if (k && k.startsWith(PREFIX)) {
      const c = read(k, null);
      if (c && Array.isArray(c.messages)) out.push(c);
    }
  }
  return out.sort((a, b) => b.updated - a.updated);
}

export function saveConversation(c) {
  c.updated = Date.now();
  // A reply still streaming is saved as it stands; `pending` is only the page's own state.
  const copy = { ...c, messages: c.messages.map(({ pending, ...m }) => m) };
  return write(PREFIX + c.id, copy);
}

export function deleteConversation(id) {
  localStorage.removeItem(PREFIX + id);
}

export function loadSettings() {
  return { ...DEFAULT_SETTINGS, ...read(SETTINGS, {}) };
}

export function saveSettings(s) {
  write(SETTINGS, s);
}

export function apiKey() {
  return localStorage.getItem(KEY) || "";
}

export function setApiKey(k) {
  if (k) localStorage.setItem(KEY, k);
  else localStorage.removeItem(KEY);
}

/// All conversations as one JSON document, for download.
export function exportJson() {
  return JSON.stringify({ exported: new Date().toISOString(), conversations: listConversations() }, null, 2);
}
