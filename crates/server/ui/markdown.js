// Markdown to DOM nodes, safe by construction: every piece of text goes into the page through
// `textContent` or a text node, never through `innerHTML`, so HTML in model output (or in a
// pasted message) shows as the characters it is and no script in it can run. Links keep only
// http(s) and mailto targets; images are shown as links, so a reply cannot make the browser
// fetch anything. An unterminated code fence (a reply still streaming) renders as code.

const el = (tag, cls) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  return e;
};

const SAFE_URL = /^(https?:\/\/|mailto:)/i;

// One inline pattern, tried left to right: code spans, bold, italic, strike, links, images.
const INLINE =
  /(`+)([\s\S]+?)\1|\*\*(.+?)\*\*|__(.+?)__|\*(?!\s)(.+?)\*|(?<![\w])_(?!\s)(.+?)_(?![\w])|~~(.+?)~~|(!?)\[([^\]]*)\]\(([^()\s]+)(?:\s+"[^"]*")?\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g;

function link(parent, text, href) {
  if (!SAFE_URL.test(href)) {
    parent.append(text);
    return;
  }
  const a = el("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  a.textContent = text || href;
  parent.append(a);
}

export function renderInline(text, parent) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    parent.append(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[1]) {
      const code = el("code");
      code.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      parent.append(code);
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const b = el("strong");
      renderInline(m[3] ?? m[4], b);
      parent.append(b);
    } else if (m[5] !== undefined || m[6] !== undefined) {
      const i = el("em");
      renderInline(m[5] ?? m[6], i);
      parent.append(i);
    } else if (m[7] !== undefined) {
      const s = el("del");
      renderInline(m[7], s);
      parent.append(s);
    } else if (m[10] !== undefined) {
      // An image is not loaded: it becomes a link to itself, labelled with its alt text.
      link(parent, m[8] ? `[image: ${m[9] || m[10]}]` : m[9], m[10]);
    } else {
      link(parent, m[11], m[11]);
    }
  }
  parent.append(text.slice(last));
}

function codeBlock(lang, code) {
  const wrap = el("div", "code");
  const bar = el("div", "code-bar");
  const name = el("span");
  name.textContent = lang || "code";
  const copy = el("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => copyText(code, copy));
  bar.append(name, copy);
  const pre = el("pre");
  const c = el("code");
  c.textContent = code;
  pre.append(c);
  wrap.append(bar, pre);
  return wrap;
}

export function copyText(text, button) {
  const done = () => {
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1200);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  } else {
    fallbackCopy(text, done); // plain http on a LAN address has no clipboard API
  }
}

function fallbackCopy(text, done) {
  const t = el("textarea");
  t.value = text;
  t.setAttribute("readonly", "");
  t.className = "offscreen";
  document.body.append(t);
  t.select();
  document.execCommand("copy");
  t.remove();
  done();
}

function splitRow(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function table(rows) {
  const t = el("table");
  const head = el("thead");
  const hr = el("tr");
  for (const c of splitRow(rows[0])) {
    const th = el("th");
    renderInline(c, th);
    hr.append(th);
  }
  head.append(hr);
  const body = el("tbody");
  for (const r of rows.slice(2)) {
    const tr = el("tr");
    for (const c of splitRow(r)) {
      const td = el("td");
      renderInline(c, td);
      tr.append(td);
    }
    body.append(tr);
  }
  t.append(head, body);
  const wrap = el("div", "table");
  wrap.append(t);
  return wrap;
}

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

/// Renders `text` as Markdown into a fresh fragment.
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  const flush = () => {
    if (!para.length) return;
    const p = el("p");
    para.forEach((l, i) => {
      if (i) p.append(el("br"));
      renderInline(l, p);
    });
    out.append(p);
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    let m;
    if ((m = line.match(FENCE))) {
      flush();
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
      out.append(codeBlock(m[2], body.join("\n")));
    } else if ((m = line.match(HEADING))) {
      flush();
      const h = el(`h${Math.min(m[1].length + 2, 6)}`);
      renderInline(m[2], h);
      out.append(h);
    } else if (RULE.test(line)) {
      flush();
      out.append(el("hr"));
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
      flush();
      const rows = [line, lines[i + 1]];
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) rows.push(lines[i++]);
      i--;
      out.append(table(rows));
    } else if (/^\s{0,3}>/.test(line)) {
      flush();
      const quote = [];
      while (i < lines.length && /^\s{0,3}>/.test(lines[i])) quote.push(lines[i++].replace(/^\s{0,3}>\s?/, ""));
      i--;
      const q = el("blockquote");
      q.append(renderMarkdown(quote.join("\n")));
      out.append(q);
    } else if ((m = line.match(ITEM))) {
      flush();
      i = list(lines, i, out) - 1;
    } else if (!line.trim()) {
      flush();
    } else {
      para.push(line);
    }
  }
  flush();
  return out;
}

/// A list starting at `lines[start]`, items indented further nest; returns the next line.
function list(lines, start, parent) {
  const first = lines[start].match(ITEM);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const l = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) l.start = parseInt(first[2], 10);
  let i = start;
  let li = null;
  while (i < lines.length) {
    const m = lines[i].match(ITEM);
    if (m && m[1].length === indent) {
      li = el("li");
      renderInline(m[3], li);
      l.append(li);
      i++;
    } else if (m && m[1].length > indent && li) {
      i = list(lines, i, li);
    } else if (li && lines[i].trim() && /^\s+/.test(lines[i]) && !FENCE.test(lines[i])) {
      li.append(el("br"));
      renderInline(lines[i].trim(), li);
      i++;
    } else {
      break;
    }
  }
  parent.append(l);
  return i;
}
