//! `ToolStream`: a choice's text, fed as it is generated, turned into OpenAI pieces — content,
//! a call's head (its name) and its argument fragments — so streamed calls show their
//! arguments while the model writes them. Non-streamed answers run the same code over the
//! whole text (`split`), so the SDK's accumulation of a stream equals the plain answer.
//!
//! Calls are recognised in every format of `tool_format::FORMATS` (Hermes tags, Mistral's
//! `[TOOL_CALLS]`, JSON `{"name": …, "arguments"|"parameters": …}` bare, fenced or in an
//! array): the format says where a call opens and what closes it; between, the call object is
//! scanned here. Output that opens with another `[`, or a call in another shape, is held and
//! given to the lenient parser in tools.rs when the choice ends.

use crate::tool_format::{Opening, FORMATS};
use crate::tools::{self, ToolCall};

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Content(String),
    /// A call starts: its index among this choice's calls and the function name.
    Call {
        index: usize,
        name: String,
    },
    /// More of the arguments of call `index` (a JSON text once all fragments are joined).
    Args {
        index: usize,
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Nothing but whitespace yet.
    Start,
    Text,
    /// A call opened at `start` in format `FORMATS[format]` (the scan is past its opening
    /// literal, if any); its name is not complete yet.
    Head {
        start: usize,
        format: usize,
    },
    /// Streaming the arguments value; `depth` of brackets open, inside a string or not.
    Args {
        format: usize,
        depth: usize,
        in_str: bool,
        esc: bool,
        string_value: bool,
        value_start: usize,
    },
    /// After the arguments: the rest of the call object (and the format's closing literal).
    Tail {
        format: usize,
        depth: usize,
        in_str: bool,
        esc: bool,
    },
    /// Between calls: whitespace is dropped, anything else is text again.
    AfterCall,
    /// Everything from `from` goes to the lenient parser at the end.
    Held {
        from: usize,
    },
}

pub struct ToolStream {
    names: Vec<String>,
    buf: String,
    /// Bytes of `buf` already decided.
    pos: usize,
    mode: Mode,
    num_calls: usize,
}

impl ToolStream {
    pub fn new(names: Vec<String>) -> Self {
        Self { names, buf: String::new(), pos: 0, mode: Mode::Start, num_calls: 0 }
    }

    pub fn num_calls(&self) -> usize {
        self.num_calls
    }

    /// Bytes of the pushed text decided as content (or skipped whitespace): no call can
    /// begin before this offset. Meaningful while `call_may_be_open` is false.
    pub fn settled(&self) -> usize {
        match self.mode {
            Mode::Head { start, .. } => start,
            Mode::Held { from } => from,
            _ => self.pos,
        }
    }

    /// A call has opened (or text is held that the lenient parser may read as one).
    pub fn call_may_be_open(&self) -> bool {
        self.num_calls > 0 || !matches!(self.mode, Mode::Start | Mode::Text)
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// The choice ended: what was held is decided now.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        match self.mode {
            Mode::Text => {
                let rest = self.buf[self.pos..].trim_end();
                if !rest.is_empty() {
                    out.push(Piece::Content(rest.to_string()));
                }
            }
            Mode::Head { start, .. } => self.lenient(start, &mut out),
            Mode::Held { from } => self.lenient(from, &mut out),
            // Text that never got past an undecided `[`.
            Mode::Start if !self.buf[self.pos..].trim().is_empty() => self.lenient(self.pos, &mut out),
            Mode::Start | Mode::Args { .. } | Mode::Tail { .. } | Mode::AfterCall => {}
        }
        self.pos = self.buf.len();
        out
    }

    /// Content up to `upto` bytes past `pos`, less trailing whitespace (which waits: it may
    /// precede a call).
    fn emit_text(&mut self, upto: usize, out: &mut Vec<Piece>) {
        let text = self.buf[self.pos..self.pos + upto].trim_end();
        if !text.is_empty() {
            out.push(Piece::Content(text.to_string()));
            self.pos += text.len();
        }
    }

    fn lenient(&mut self, from: usize, out: &mut Vec<Piece>) {
        let (content, calls) = tools::parse(&self.buf[from..], &self.names);
        if let Some(c) = content.map(|c| c.trim().to_string()).filter(|c| !c.is_empty()) {
            out.push(Piece::Content(c));
        }
        for ToolCall { name, arguments } in calls {
            let index = self.num_calls;
            self.num_calls += 1;
            out.push(Piece::Call { index, name });
            out.push(Piece::Args { index, text: arguments });
        }
    }

    /// Advances as far as the text allows; false when it must wait for more.
    fn step(&mut self, out: &mut Vec<Piece>) -> bool {
        let rest = &self.buf[self.pos..];
        match self.mode {
            Mode::Start | Mode::AfterCall => {
                // Leading whitespace, and between calls the separators of an array or the
                // closing fence, are not content.
                let skip: &[char] = if self.mode == Mode::Start {
                    &[' ', '\t', '\r', '\n']
                } else {
                    &[' ', '\t', '\r', '\n', ',', ']', '`']
                };
                let Some(i) = rest.find(|c: char| !skip.contains(&c)) else {
                    self.pos = self.buf.len();
                    return false;
                };
                let r = &rest[i..];
                if self.mode == Mode::Start && r.starts_with('[') {
                    match opening(r) {
                        // Decided only once enough text is here, so any chunking agrees.
                        Opening::Wait => {
                            self.pos += i;
                            return false;
                        }
                        Opening::No => self.mode = Mode::Held { from: self.pos + i },
                        Opening::At(_) => self.mode = Mode::Text,
                    }
                } else {
                    self.mode = Mode::Text;
                }
                self.pos += i;
                true
            }
            Mode::Text => {
                // The earliest place a call may start, in any format.
                let mut at = 0;
                loop {
                    let Some(i) =
                        rest[at..].find(|c| FORMATS.iter().any(|f| f.first_chars().contains(&c))).map(|i| at + i)
                    else {
                        self.emit_text(rest.len(), out);
                        return false;
                    };
                    let found = FORMATS.iter().enumerate().find_map(|(k, f)| match f.opening(&rest[i..]) {
                        Opening::No => None,
                        other => Some((k, other)),
                    });
                    match found {
                        Some((_, Opening::Wait)) => {
                            self.emit_text(i, out);
                            return false;
                        }
                        Some((format, Opening::At(skip))) => {
                            let start = self.pos + i;
                            self.emit_text(i, out);
                            self.pos = start + skip;
                            self.mode = Mode::Head { start, format };
                            return true;
                        }
                        _ => at = i + 1,
                    }
                }
            }
            Mode::Head { start, format } => match parse_head(rest) {
                Head::Incomplete => false,
                Head::Bad => {
                    self.mode = Mode::Held { from: start };
                    true
                }
                Head::Ok { name, value_at } => {
                    if !self.names.contains(&name) {
                        self.mode = Mode::Held { from: start };
                        return true;
                    }
                    let index = self.num_calls;
                    self.num_calls += 1;
                    out.push(Piece::Call { index, name });
                    let first = rest.as_bytes()[value_at];
                    if first != b'{' && first != b'[' && first != b'"' {
                        // Scalar arguments: not a call after all.
                        self.num_calls -= 1;
                        out.pop();
                        self.mode = Mode::Held { from: start };
                        return true;
                    }
                    self.pos += value_at;
                    self.mode = Mode::Args {
                        format,
                        depth: 0,
                        in_str: false,
                        esc: false,
                        string_value: first == b'"',
                        value_start: self.pos,
                    };
                    true
                }
            },
            Mode::Args { format, mut depth, mut in_str, mut esc, string_value, value_start } => {
                let index = self.num_calls - 1;
                let mut end = None;
                for (i, c) in rest.char_indices() {
                    if scan(c, &mut depth, &mut in_str, &mut esc, string_value) {
                        end = Some(i + c.len_utf8());
                        break;
                    }
                }
                let upto = end.unwrap_or(rest.len());
                if !string_value && upto > 0 {
                    out.push(Piece::Args { index, text: rest[..upto].to_string() });
                }
                self.pos += upto;
                match end {
                    None => {
                        self.mode = Mode::Args { format, depth, in_str, esc, string_value, value_start };
                        false
                    }
                    Some(_) => {
                        if string_value {
                            let literal = &self.buf[value_start..self.pos];
                            let text = serde_json::from_str::<String>(literal).unwrap_or_default();
                            out.push(Piece::Args { index, text });
                        }
                        self.mode = Mode::Tail { format, depth: 1, in_str: false, esc: false };
                        true
                    }
                }
            }
            Mode::Tail { format, mut depth, mut in_str, mut esc } => {
                if depth > 0 {
                    for (i, c) in rest.char_indices() {
                        if scan(c, &mut depth, &mut in_str, &mut esc, false) {
                            self.pos += i + c.len_utf8();
                            self.mode = Mode::Tail { format, depth: 0, in_str: false, esc: false };
                            return true;
                        }
                    }
                    self.pos = self.buf.len();
                    self.mode = Mode::Tail { format, depth, in_str, esc };
                    return false;
                }
                let close = FORMATS[format].close;
                if close.is_empty() {
                    self.mode = Mode::AfterCall;
                    return true;
                }
                let t = rest.trim_start();
                if t.len() < close.len() && close.starts_with(t) {
                    return false; // maybe the closing literal, not complete yet
                }
                if let Some(after) = t.strip_prefix(close) {
                    self.pos = self.buf.len() - after.len();
                }
                self.mode = Mode::AfterCall;
                true
            }
            Mode::Held { .. } => false,
        }
    }
}

/// Advances a JSON scan by one character; true when the value that started at depth 0 closes.
/// A string value (`string_value`) closes at its closing quote.
fn scan(c: char, depth: &mut usize, in_str: &mut bool, esc: &mut bool, string_value: bool) -> bool {
    if *in_str {
        if *esc {
            *esc = false;
        } else if c == '\\' {
            *esc = true;
        } else if c == '"' {
            *in_str = false;
            return string_value && *depth == 0;
        }
        return false;
    }
    match c {
        '"' => *in_str = true,
        '{' | '[' => *depth += 1,
        '}' | ']' => {
            *depth = depth.saturating_sub(1);
            return *depth == 0;
        }
        _ => {}
    }
    false
}

/// Whether `r` opens a call in some format: the first format that can tell decides.
fn opening(r: &str) -> Opening {
    FORMATS.iter().map(|f| f.opening(r)).find(|o| *o != Opening::No).unwrap_or(Opening::No)
}

enum Head {
    Incomplete,
    Bad,
    Ok { name: String, value_at: usize },
}

/// Parses `{"name": "…", "arguments": ` (or `"parameters"`), whitespace anywhere between.
fn parse_head(s: &str) -> Head {
    let b = s.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // Each expected piece in order; a missing byte at the end means "wait".
    macro_rules! expect {
        ($lit:expr) => {{
            ws(&mut i);
            let lit: &[u8] = $lit;
            let n = lit.len().min(b.len() - i);
            if b[i..i + n] != lit[..n] {
                return Head::Bad;
            }
            if n < lit.len() {
                return Head::Incomplete;
            }
            i += lit.len();
        }};
    }
    expect!(b"{");
    expect!(b"\"name\"");
    expect!(b":");
    ws(&mut i);
    if i >= b.len() {
        return Head::Incomplete;
    }
    if b[i] != b'"' {
        return Head::Bad;
    }
    let (mut j, mut esc) = (i + 1, false);
    loop {
        if j >= b.len() {
            return Head::Incomplete;
        }
        match (esc, b[j]) {
            (true, _) => esc = false,
            (false, b'\\') => esc = true,
            (false, b'"') => break,
            _ => {}
        }
        j += 1;
    }
    let Ok(name) = serde_json::from_str::<String>(&s[i..=j]) else { return Head::Bad };
    i = j + 1;
    expect!(b",");
    ws(&mut i);
    let key = &b[i..];
    let args = b"\"arguments\"";
    let params = b"\"parameters\"";
    let n = key.len();
    if n < params.len() && (args.starts_with(key) || params.starts_with(key)) {
        return Head::Incomplete;
    }
    if key.starts_with(args) {
        i += args.len();
    } else if key.starts_with(params) {
        i += params.len();
    } else {
        return Head::Bad;
    }
    expect!(b":");
    ws(&mut i);
    if i >= b.len() {
        return Head::Incomplete;
    }
    Head::Ok { name, value_at: i }
}

/// The whole text at once: content (None when empty) and calls, exactly what a stream of the
/// same text accumulates to.
pub fn split(text: &str, names: &[String]) -> (Option<String>, Vec<ToolCall>) {
    let mut ts = ToolStream::new(names.to_vec());
    let mut pieces = ts.push(text);
    pieces.extend(ts.finish());
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for p in pieces {
        match p {
            Piece::Content(c) => content.push_str(&c),
            Piece::Call { name, .. } => calls.push(ToolCall { name, arguments: String::new() }),
            Piece::Args { index, text } => calls[index].arguments.push_str(&text),
        }
    }
    ((!content.is_empty()).then_some(content), calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["get_weather".into(), "convert_currency".into()]
    }

    /// Feeds `text` in pieces of `n` characters and accumulates as the openai SDK does.
    fn accumulate(text: &str, n: usize) -> (Option<String>, Vec<(String, String)>) {
        let mut ts = ToolStream::new(names());
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        for c in chars.chunks(n) {
            pieces.extend(ts.push(&c.iter().collect::<String>()));
        }
        pieces.extend(ts.finish());
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for p in pieces {
            match p {
                Piece::Content(c) => content.push_str(&c),
                Piece::Call { index, name } => {
                    assert_eq!(index, calls.len());
                    calls.push((name, String::new()))
                }
                Piece::Args { index, text } => calls[index].1.push_str(&text),
            }
        }
        ((!content.is_empty()).then_some(content), calls)
    }

    #[test]
    fn streamed_pieces_add_up_to_the_whole_text_split_however_it_arrives() {
        type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            ("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Hà Nội\", \"days\": [1, 2]}}\n</tool_call>", None, &[("get_weather", "{\"city\": \"Hà Nội\", \"days\": [1, 2]}")]),
            (
                "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a}b\\\"c\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"convert_currency\", \"arguments\": {\"amount\": 5}}\n</tool_call>",
                Some("Let me check."),
                &[("get_weather", "{\"city\": \"a}b\\\"c\"}"), ("convert_currency", "{\"amount\": 5}")],
            ),
            ("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}", None, &[("get_weather", "{\"city\": \"Rome\"}")]),
            ("Sure: {\"name\": \"get_weather\", \"arguments\": {}}", Some("Sure:"), &[("get_weather", "{}")]),
            ("{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"X\\\"}\"}", None, &[("get_weather", "{\"city\": \"X\"}")]),
            ("[{\"name\": \"get_weather\", \"arguments\": {}}]", None, &[("get_weather", "{}")]),
            ("It is sunny, <b>31</b> degrees.", Some("It is sunny, <b>31</b> degrees."), &[]),
            ("{\"name\": \"launch\", \"arguments\": {}}", Some("{\"name\": \"launch\", \"arguments\": {}}"), &[]),
            ("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa", None, &[("get_weather", "{\"city\": \"Pa")]),
            ("```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\n    \"city\": \"Oslo\"\n  }\n}\n```", None, &[("get_weather", "{\n    \"city\": \"Oslo\"\n  }")]),
            ("Here you go:\n```json\n[\n  {\"name\": \"get_weather\", \"arguments\": {\"city\": \"A\"}},\n  {\"name\": \"convert_currency\", \"arguments\": {\"amount\": 1}}\n]\n```\nDone.", Some("Here you go:Done."), &[("get_weather", "{\"city\": \"A\"}"), ("convert_currency", "{\"amount\": 1}")]),
            ("```python\ndef f(x):\n    return {\"a\": [x]}\n```", Some("```python\ndef f(x):\n    return {\"a\": [x]}\n```"), &[]),
            ("[1, 2, 3]", Some("[1, 2, 3]"), &[]),
            ("[Note] {\"name\": \"get_weather\", \"arguments\": {}}", Some("[Note] {\"name\": \"get_weather\", \"arguments\": {}}"), &[]),
            ("[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]", None, &[("get_weather", "{\"city\": \"Oslo\"}")]),
            ("[", Some("["), &[]),
        ];
        for (text, content, calls) in cases {
            let want: Vec<(String, String)> = calls.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
            for n in [1, 2, 3, 7, 1000] {
                let (c, got) = accumulate(text, n);
                assert_eq!(c.as_deref(), *content, "{text:?} in pieces of {n}");
                assert_eq!(got, want, "{text:?} in pieces of {n}");
            }
            let (c, got) = split(text, &names());
            assert_eq!(c.as_deref(), *content, "{text:?} split");
            assert_eq!(got.into_iter().map(|c| (c.name, c.arguments)).collect::<Vec<_>>(), want, "{text:?} split");
        }
    }

    #[test]
    fn every_format_reads_the_same_streamed_whole_and_leniently() {
        let sets: &[&[(&str, &str)]] = &[
            &[("get_weather", "{\"city\": \"Hà Nội\", \"days\": [1, 2]}")],
            &[("get_weather", "{\"city\": \"a}b\\\"c\"}"), ("convert_currency", "{\"amount\": 5}")],
        ];
        for f in crate::tool_format::FORMATS {
            for calls in sets {
                let text = f.write(calls);
                let want: Vec<(String, String)> = calls.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
                for n in [1, 2, 3, 7, 1000] {
                    assert_eq!(
                        accumulate(&text, n),
                        (None, want.clone()),
                        "{} streamed in pieces of {n}: {text}",
                        f.name
                    );
                }
                let (content, got) = split(&text, &names());
                assert_eq!(
                    (content, got.into_iter().map(|c| (c.name, c.arguments)).collect::<Vec<_>>()),
                    (None, want.clone()),
                    "{} split",
                    f.name
                );
                // The lenient parser agrees on the calls (it re-serializes their arguments).
                let (content, got) = tools::parse(&text, &names());
                let norm = |a: &str| serde_json::from_str::<serde_json::Value>(a).unwrap();
                assert_eq!(content, None, "{} parse", f.name);
                assert_eq!(
                    got.iter().map(|c| (c.name.clone(), norm(&c.arguments))).collect::<Vec<_>>(),
                    want.iter().map(|(n, a)| (n.clone(), norm(a))).collect::<Vec<_>>(),
                    "{} parse",
                    f.name
                );
            }
        }
    }

    #[test]
    fn arguments_stream_before_the_call_is_complete() {
        let mut ts = ToolStream::new(names());
        assert!(ts.push("<tool_call>\n{\"name\": \"get_").is_empty());
        assert_eq!(
            ts.push("weather\", \"arguments\": {\"ci"),
            vec![Piece::Call { index: 0, name: "get_weather".into() }, Piece::Args { index: 0, text: "{\"ci".into() }]
        );
        assert_eq!(ts.push("ty\": 1"), vec![Piece::Args { index: 0, text: "ty\": 1".into() }]);
    }
}
