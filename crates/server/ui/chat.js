// The page's only contact with the server: `GET /v1/models` and a streamed
// `POST /v1/chat/completions`, read as server-sent events. An error answer keeps the server's
// own message, type and code; a 401 is its own error so the page can ask for a key; a stop
// aborts the fetch, which closes the connection and lets the server free the request.

import { apiKey } from "./store.js";

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(typeof e === "string" ? e : e.message || `HTTP ${status}`);
    this.status = status;
    this.type = e.type || null;
    this.code = e.code || null;
    this.param = e.param || null;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const k = apiKey();
  if (k) h.Authorization = `Bearer ${k}`;
  return h;
}

async function failure(resp) {
  let body = null;
  try {
    body = JSON.parse(await resp.text());
  } catch {
    body = null;
  }
  return new ApiError(resp.status, body);
}

/// The chat models the server serves (embedding models cannot chat).
export async function listModels() {
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) throw await failure(resp);
  const list = await resp.json();
  return list.data.filter((m) => !m.capabilities || m.capabilities.includes("chat"));
}

/// Yields the `data:` payloads of an SSE body (comments, such as keep-alive pings, skipped).
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let end;
    while ((end = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

/// Streams one reply. `onUpdate(reply)` runs on every chunk with what has arrived so far:
/// `{content, reasoning, tool_calls, finish_reason, usage, ttft_ms}`. Resolves with the
/// finished reply plus `tokens_per_s`; rejects with `ApiError`, or an `AbortError` on stop.
export async function streamChat({ model, messages, params, signal, onUpdate }) {
  const body = { model, messages, stream: true, stream_options: { include_usage: true }, ...params };
  const t0 = performance.now();
  const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!resp.ok) throw await failure(resp);
  const reply = { content: "", reasoning: "", tool_calls: [], finish_reason: null, usage: null, ttft_ms: null, num_chunks: 0 };
  let tFirst = null;
  for await (const data of events(resp.body)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(resp.status, chunk);
    if (chunk.usage) reply.usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      const d = choice.delta || {};
      if (d.content || d.reasoning_content || d.tool_calls) {
        if (tFirst === null) {
          tFirst = performance.now();
          reply.ttft_ms = tFirst - t0;
        }
        reply.num_chunks++;
      }
      if (d.content) reply.content += d.content;
      if (d.reasoning_content) reply.reasoning += d.reasoning_content;
      for (const tc of d.tool_calls || []) {
        const slot = (reply.tool_calls[tc.index ?? 0] ||= { id: "", type: "function", function: { name: "", arguments: "" } });
        if (tc.id) slot.id = tc.id;
        if (tc.function?.name) slot.function.name += tc.function.name;
        if (tc.function?.arguments) slot.function.arguments += tc.function.arguments;
      }
      if (choice.finish_reason) reply.finish_reason = choice.finish_reason;
    }
    onUpdate(reply);
  }
  const tEnd = performance.now();
  const n = reply.usage ? reply.usage.completion_tokens : reply.num_chunks;
  // Decode speed: the tokens after the first, over the time after the first.
  reply.tokens_per_s = tFirst !== null && n > 1 && tEnd > tFirst ? ((n - 1) * 1000) / (tEnd - tFirst) : null;
  reply.num_tokens = n;
  reply.tool_calls = reply.tool_calls.filter(Boolean);
  return reply;
}
