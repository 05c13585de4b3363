//! Tool-call formats: each way a model family writes function calls is one entry of
//! `FORMATS`, which gives everything the server does with it — its trigger (the regex that
//! says, in `auto` mode, that a call has begun), its grammar (the Lark rules constrained
//! decoding holds the call to), how the streaming scanner (tool_stream.rs) recognises where a
//! call opens and closes, and how the lenient parser (tools.rs) reads it. The final answer is
//! the scanner run over the whole text, so a streamed answer and a plain one agree by
//! construction; adding a family's format is one entry here.
//!
//! ```text
//!  hermes   <tool_call>\n{"name": …, "arguments": …}\n</tool_call>   (Qwen, Hermes; the default)
//!  mistral  [TOOL_CALLS][{"name": …, "arguments": …}, …]
//!  json     {"name": …, "arguments"|"parameters": …}, or an array, maybe in a ```json fence
//!           (Llama 3 writes `parameters`; small models often skip their template's tags)
//! ```

use serde_json::Value;

/// How the calls of a format are laid out after its opening literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One call object between `open` and `close`; several such pairs, newline-separated.
    Tagged,
    /// A JSON array of call objects right after `open`.
    Array,
    /// A call object or an array of them, optionally in a ```json fence; no literal.
    Bare,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ToolFormat {
    pub name: &'static str,
    /// The literal a call region starts with ("" for bare JSON).
    pub open: &'static str,
    /// The literal after each call ("" when none).
    pub close: &'static str,
    pub layout: Layout,
    /// A chat template that contains this text writes calls in this format itself.
    pub template_marker: Option<&'static str>,
}

pub const HERMES: ToolFormat = ToolFormat {
    name: "hermes",
    open: "<tool_call>",
    close: "</tool_call>",
    layout: Layout::Tagged,
    template_marker: Some("<tool_call>"),
};
pub const MISTRAL: ToolFormat = ToolFormat {
    name: "mistral",
    open: "[TOOL_CALLS]",
    close: "",
    layout: Layout::Array,
    template_marker: Some("[TOOL_CALLS]"),
};
pub const JSON: ToolFormat =
    ToolFormat { name: "json", open: "", close: "", layout: Layout::Bare, template_marker: None };

/// Every format the scanner recognises, in the order it tries them at one position.
pub const FORMATS: &[ToolFormat] = &[HERMES, MISTRAL, JSON];

/// Whether text opens a call, as far as it has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Too little text to tell.
    Wait,
    No,
    /// A call object starts this many bytes in (for a tagged format: right after the tag;
    /// the object's `{` may follow whitespace).
    At(usize),
}

/// The most calls one constrained answer may hold (a small model must not loop on calls).
pub const MAX_PARALLEL_CALLS: usize = 8;

impl ToolFormat {
    /// The format the model's own chat template asks for (Hermes when it names none).
    pub fn native(template_source: &str) -> &'static ToolFormat {
        FORMATS.iter().find(|f| f.template_marker.is_some_and(|m| template_source.contains(m))).unwrap_or(&HERMES)
    }

    /// Whether `r` (text from a candidate position on) opens a call in this format.
    pub fn opening(&self, r: &str) -> Opening {
        match self.layout {
            Layout::Bare => json_call_start(r),
            Layout::Tagged | Layout::Array => {
                if !r.starts_with(self.open) {
                    return if self.open.starts_with(r) { Opening::Wait } else { Opening::No };
                }
                match self.layout {
                    Layout::Tagged => Opening::At(self.open.len()),
                    _ => match json_call_start(&r[self.open.len()..]) {
                        Opening::At(k) => Opening::At(self.open.len() + k),
                        other => other,
                    },
                }
            }
        }
    }

    /// The characters a call in this format can start with (where the scanner looks).
    pub fn first_chars(&self) -> &'static [char] {
        match self.layout {
            Layout::Bare => &['`', '[', '{'],
            _ => match self.open.as_bytes().first() {
                Some(b'<') => &['<'],
                Some(b'[') => &['['],
                _ => &[],
            },
        }
    }

    /// The `auto`-mode trigger: a regex matching the start of a call, from its first byte.
    /// `names` are the offered tools' names, JSON-escaped as the model writes them.
    pub fn trigger(&self, names: &[String], parallel: bool) -> String {
        match self.layout {
            Layout::Tagged | Layout::Array => regex::escape(self.open),
            Layout::Bare => {
                let names: Vec<String> =
                    names.iter().map(|n| regex::escape(&Value::String(n.clone()).to_string())).collect();
                let bracket = if parallel { "(?:\\[[ \\t\\n]*)?" } else { "" };
                format!(
                    "(?:```(?:json)?[ \\t\\n]*)?{bracket}\\{{[ \\t\\n]*\"name\"[ \\t\\n]*:[ \\t\\n]*(?:{})",
                    names.join("|")
                )
            }
        }
    }

    /// The name of this format's start rule in the grammar (`lark`).
    pub fn rule(&self) -> String {
        format!("{}_calls", self.name)
    }

    /// This format's Lark rules, its start rule named `rule()`. They use `call_body`, one
    /// call object in the `json.dumps` layout, and for bare JSON `flex_body`, one in the
    /// layout the model chose (models that skip the tags indent as they like), with the
    /// terminals `FENCE`, `CLOSE` and `WS` (grammar.rs defines them).
    pub fn lark(&self, parallel: bool) -> String {
        let rule = self.rule();
        let up_to = MAX_PARALLEL_CALLS - 1;
        let more =
            |sep: &str, item: &str| if parallel { format!(" ({sep} {item}){{0,{up_to}}}") } else { String::new() };
        match self.layout {
            Layout::Tagged => {
                let (open, close) = (lark_str(&format!("{}\n", self.open)), lark_str(&format!("\n{}", self.close)));
                let one = format!("{}_call", self.name);
                format!("{rule}: {one}{}\n{one}: {open} call_body {close}\n", more("\"\\n\"", &one))
            }
            Layout::Array => {
                format!("{rule}: {} \"[\" call_body{} \"]\"\n", lark_str(self.open), more("\", \"", "call_body"))
            }
            Layout::Bare => {
                let array = if parallel {
                    format!(" | \"[\" WS? flex_body (WS? \",\" WS? flex_body){{0,{up_to}}} WS? \"]\"")
                } else {
                    String::new()
                };
                format!("{rule}: FENCE? (flex_body{array}) CLOSE?\n")
            }
        }
    }

    /// The text of `calls` (name, arguments JSON) in this format, as a model following it
    /// writes them; what the tests feed back through the scanner and the grammar.
    pub fn write(&self, calls: &[(&str, &str)]) -> String {
        let obj = |(n, a): &(&str, &str)| format!("{{\"name\": {}, \"arguments\": {a}}}", Value::String(n.to_string()));
        let objs: Vec<String> = calls.iter().map(obj).collect();
        match self.layout {
            Layout::Tagged => {
                objs.iter().map(|o| format!("{}\n{o}\n{}", self.open, self.close)).collect::<Vec<_>>().join("\n")
            }
            Layout::Array => format!("{}[{}]", self.open, objs.join(", ")),
            Layout::Bare if objs.len() == 1 => objs[0].clone(),
            Layout::Bare => format!("[{}]", objs.join(", ")),
        }
    }
}

/// A Lark string literal.
fn lark_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Whether `r` opens a JSON call: an optional fence (```json), an optional `[`, then
/// `{"name"` with whitespace allowed between. `At` points at the `{`.
fn json_call_start(r: &str) -> Opening {
    let b = r.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // Matches `lit` at `i` (advancing); None: the text ends inside it.
    let lit = |i: &mut usize, lit: &[u8]| -> Option<bool> {
        let n = lit.len().min(b.len() - *i);
        if b[*i..*i + n] != lit[..n] {
            return Some(false);
        }
        if n < lit.len() {
            return None;
        }
        *i += n;
        Some(true)
    };
    match lit(&mut i, b"```") {
        None => return Opening::Wait,
        Some(true) => {
            if lit(&mut i, b"json").is_none() {
                return Opening::Wait;
            }
            ws(&mut i);
        }
        Some(false) => {}
    }
    match lit(&mut i, b"[") {
        None => return Opening::Wait,
        Some(true) => ws(&mut i),
        Some(false) => {}
    }
    let brace = i;
    match lit(&mut i, b"{") {
        None => return Opening::Wait,
        Some(false) => return Opening::No,
        Some(true) => ws(&mut i),
    }
    match lit(&mut i, b"\"name\"") {
        None => Opening::Wait,
        Some(false) => Opening::No,
        Some(true) => Opening::At(brace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_opens_where_its_text_starts_and_its_trigger_matches_there() {
        let names = vec!["get_weather".to_string()];
        for f in FORMATS {
            let text = f.write(&[("get_weather", "{\"city\": \"Hà Nội\"}"), ("get_weather", "{}")]);
            assert!(matches!(f.opening(&text), Opening::At(_)), "{}: {text}", f.name);
            assert!(f.first_chars().contains(&text.chars().next().unwrap()), "{}", f.name);
            let rx = regex::Regex::new(&f.trigger(&names, true)).unwrap();
            assert_eq!(rx.find(&text).map(|m| m.start()), Some(0), "{}: {text}", f.name);
            // Any cut of the opening waits rather than deciding too early.
            for cut in 1..f.open.len() {
                assert_eq!(f.opening(&text[..cut]), Opening::Wait, "{} cut at {cut}", f.name);
            }
        }
        assert_eq!(ToolFormat::native("{% if tools %}[TOOL_CALLS]{% endif %}").name, "mistral");
        assert_eq!(ToolFormat::native("<tool_call>").name, "hermes");
        assert_eq!(ToolFormat::native("{{ messages }}").name, "hermes");
    }
}
