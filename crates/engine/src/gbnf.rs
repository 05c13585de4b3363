//! GBNF, llama.cpp's grammar format, rewritten into the Lark dialect llguidance compiles, so
//! a `grammar` written for llama.cpp constrains slm's output the same way. Covers the whole
//! format: `name ::= …` rules (names with dashes, any case; `root` starts), alternatives,
//! groups, `"strings"` and `[classes]` with llama.cpp's escapes (`\n \t \r \\ \" \[ \] \xHH
//! \uHHHH \UHHHHHHHH`), `.` (any character), `* + ?` and `{m}` `{m,}` `{m,n}`, `#` comments;
//! newlines end a rule except inside parentheses or after `|`, as llama.cpp parses it. The
//! server calls `to_lark` when a grammar looks like GBNF (`is_gbnf`).

use std::collections::HashMap;
use std::fmt::Write;

/// A grammar is GBNF when a line outside comments defines a rule with `::=` (vLLM's test).
pub fn is_gbnf(src: &str) -> bool {
    src.lines().any(|l| l.split('#').next().unwrap_or("").contains("::="))
}

/// The Lark grammar with GBNF `src`'s language; the error names the line and what was wrong.
pub fn to_lark(src: &str) -> Result<String, String> {
    let mut p = Parser { s: src.chars().collect(), pos: 0, names: HashMap::new() };
    let mut rules: Vec<(String, String)> = Vec::new();
    loop {
        p.space(true);
        if p.at_end() {
            break;
        }
        let name = p.name().ok_or_else(|| p.error("expected a rule name"))?;
        p.space(false);
        if !p.eat_str("::=") {
            return Err(p.error("expected `::=` after the rule name"));
        }
        p.space(true);
        let body = p.alternates(false)?;
        if !p.at_end() && !p.eat('\n') && !p.eat_str("\r\n") {
            return Err(p.error("unexpected text after the rule"));
        }
        let lark = p.lark_name(&name);
        if rules.iter().any(|(n, _)| *n == lark) {
            return Err(format!("rule `{name}` is defined twice"));
        }
        rules.push((lark, body));
    }
    let root = p.names.get("root").cloned().ok_or("the grammar has no `root` rule")?;
    if !rules.iter().any(|(n, _)| *n == root) {
        return Err("the grammar has no `root` rule".into());
    }
    for (gbnf, lark) in &p.names {
        if !rules.iter().any(|(n, _)| n == lark) {
            return Err(format!("rule `{gbnf}` is used but never defined"));
        }
    }
    let mut out = format!("start: {root}\n");
    for (name, body) in rules {
        let _ = writeln!(out, "{name}: {body}");
    }
    Ok(out)
}

struct Parser {
    s: Vec<char>,
    pos: usize,
    /// GBNF rule name → its Lark name.
    names: HashMap<String, String>,
}

/// Bounds that keep a crafted grammar from exploding into a huge rewrite.
const MAX_REPEAT: u32 = 10_000;
const MAX_DEPTH: usize = 64;

impl Parser {
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, t: &str) -> bool {
        let n = t.chars().count();
        if self.s.len() >= self.pos + n && self.s[self.pos..self.pos + n].iter().copied().eq(t.chars()) {
            self.pos += n;
            true
        } else {
            false
        }
    }

    fn error(&self, what: &str) -> String {
        let line = self.s[..self.pos.min(self.s.len())].iter().filter(|&&c| c == '\n').count() + 1;
        format!("GBNF grammar, line {line}: {what}")
    }

    /// Skips blanks and comments; newlines too when `newlines`.
    fn space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while !matches!(self.peek(), None | Some('\n')) {
                    self.pos += 1;
                }
            } else if c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r')) {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Whether `::=` follows on this line: the name just read starts the next rule.
    fn defines_next(&self) -> bool {
        let rest = &self.s[self.pos..];
        let blank = rest.iter().take_while(|&&c| c == ' ' || c == '\t').count();
        rest[blank..].starts_with(&[':', ':', '='])
    }

    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.s[start..self.pos].iter().collect())
    }

    /// Lark rule names are lower case; each GBNF name gets its own (`g_` keeps them apart
    /// from Lark's and llguidance's reserved names, the index from case-folded twins).
    fn lark_name(&mut self, gbnf: &str) -> String {
        if let Some(n) = self.names.get(gbnf) {
            return n.clone();
        }
        let base = format!("g_{}", gbnf.to_ascii_lowercase().replace('-', "_"));
        let taken = |n: &String| self.names.values().any(|v| v == n);
        let mut name = base.clone();
        let mut i = 1;
        while taken(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(gbnf.to_string(), name.clone());
        name
    }

    fn alternates(&mut self, nested: bool) -> Result<String, String> {
        self.alternates_at(nested, 0)
    }

    fn alternates_at(&mut self, nested: bool, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("groups nested too deeply"));
        }
        let mut alts = vec![self.sequence(nested, depth)?];
        while self.eat('|') {
            self.space(true);
            alts.push(self.sequence(nested, depth)?);
        }
        Ok(alts.join(" | "))
    }

    fn sequence(&mut self, nested: bool, depth: usize) -> Result<String, String> {
        let mut items = Vec::new();
        loop {
            let item = match self.peek() {
                Some('"') => {
                    self.pos += 1;
                    lark_string(&self.literal('"')?)
                }
                Some('[') => {
                    self.pos += 1;
                    self.class()?
                }
                Some('.') => {
                    self.pos += 1;
                    "/(?s:.)/".to_string()
                }
                Some('(') => {
                    self.pos += 1;
                    self.space(true);
                    let inner = self.alternates_at(true, depth + 1)?;
                    self.space(true);
                    if !self.eat(')') {
                        return Err(self.error("expected `)`"));
                    }
                    format!("({inner})")
                }
                Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                    let save = self.pos;
                    let n = self.name().expect("starts a name");
                    // The next rule's `name ::=` on a following line ends this one (only
                    // reachable inside parentheses, where newlines are blanks).
                    if self.defines_next() {
                        self.pos = save;
                        return Err(self.error("expected `)` before the next rule"));
                    }
                    self.lark_name(&n)
                }
                _ => break,
            };
            items.push(self.repetition(item)?);
            self.space(nested);
        }
        Ok(if items.is_empty() { "\"\"".to_string() } else { items.join(" ") })
    }

    fn repetition(&mut self, item: String) -> Result<String, String> {
        let op = match self.peek() {
            Some(c @ ('*' | '+' | '?')) => {
                self.pos += 1;
                c.to_string()
            }
            Some('{') => {
                self.pos += 1;
                self.space(false);
                let min = self.number()?.unwrap_or(0);
                self.space(false);
                let max = if self.eat(',') {
                    self.space(false);
                    self.number()?
                } else {
                    Some(min)
                };
                self.space(false);
                if !self.eat('}') {
                    return Err(self.error("expected `}` to close the repetition"));
                }
                if max.is_some_and(|m| m < min) {
                    return Err(self.error("a repetition's maximum is below its minimum"));
                }
                match max {
                    Some(0) => return Ok("\"\"".to_string()),
                    Some(max) => format!("{{{min},{max}}}"),
                    None if min == 0 => "*".to_string(),
                    None if min == 1 => "+".to_string(),
                    None => format!("{{{min},}}"),
                }
            }
            _ => return Ok(item),
        };
        Ok(format!("({item}){op}"))
    }

    fn number(&mut self) -> Result<Option<u32>, String> {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.pos == start {
            return Ok(None);
        }
        let n: u32 =
            self.s[start..self.pos].iter().collect::<String>().parse().map_err(|_| self.error("number too large"))?;
        if n > MAX_REPEAT {
            return Err(self.error(&format!("repetitions are limited to {MAX_REPEAT}")));
        }
        Ok(Some(n))
    }

    /// One character of a string or class, escapes decoded.
    fn char(&mut self) -> Result<char, String> {
        let c = self.peek().ok_or_else(|| self.error("unterminated string or class"))?;
        self.pos += 1;
        if c != '\\' {
            return Ok(c);
        }
        let e = self.peek().ok_or_else(|| self.error("unterminated escape"))?;
        self.pos += 1;
        let hex = |p: &mut Parser, n: usize| -> Result<char, String> {
            let digits: String = p.s.get(p.pos..p.pos + n).unwrap_or(&[]).iter().collect();
            p.pos += n;
            u32::from_str_radix(&digits, 16)
                .ok()
                .filter(|_| digits.len() == n)
                .and_then(char::from_u32)
                .ok_or_else(|| p.error(&format!("bad escape `\\{e}{digits}`")))
        };
        Ok(match e {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            '\\' | '"' | '[' | ']' | '-' | '^' | '/' => e,
            other => return Err(self.error(&format!("unknown escape `\\{other}`"))),
        })
    }

    fn literal(&mut self, end: char) -> Result<String, String> {
        let mut out = String::new();
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error("unterminated string")),
                Some(c) if c == end => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => out.push(self.char()?),
            }
        }
    }

    /// `[...]` as a Lark regular expression; the opening bracket is consumed.
    fn class(&mut self) -> Result<String, String> {
        let mut re = String::from("/[");
        if self.eat('^') {
            re.push('^');
        }
        let mut empty = true;
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error("unterminated character class")),
                Some(']') if !empty => {
                    self.pos += 1;
                    break;
                }
                Some(']') => return Err(self.error("empty character class")),
                _ => {
                    let lo = self.char()?;
                    push_class_char(&mut re, lo);
                    if self.peek() == Some('-') && self.s.get(self.pos + 1) != Some(&']') {
                        self.pos += 1;
                        let hi = self.char()?;
                        if hi < lo {
                            return Err(self.error("a class range ends below its start"));
                        }
                        re.push('-');
                        push_class_char(&mut re, hi);
                    }
                    empty = false;
                }
            }
        }
        re.push_str("]/");
        Ok(re)
    }
}

/// A character inside a regex class: letters and digits as they are, all else by code point.
fn push_class_char(re: &mut String, c: char) {
    if c.is_ascii_alphanumeric() {
        re.push(c);
    } else {
        let _ = write!(re, "\\x{{{:x}}}", c as u32);
    }
}

/// A Lark (JSON-syntax) string literal for `s`.
fn lark_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_strings_classes_and_repetitions_are_rewritten() {
        let g = "# yes or no\nroot ::= answer \"!\"?\nanswer ::= (\"yes\" | \"no\") [ \\t]{0,2}\n";
        assert!(is_gbnf(g));
        assert_eq!(
            to_lark(g).unwrap(),
            "start: g_root\ng_root: g_answer (\"!\")?\ng_answer: (\"yes\" | \"no\") (/[\\x{20}\\x{9}]/){0,2}\n"
        );
        let l = to_lark("root ::= [^\"\\\\] . x-y+\nx-y ::= \"\\x41\\u00e9\\n\"").unwrap();
        assert_eq!(l, "start: g_root\ng_root: /[^\\x{22}\\x{5c}]/ /(?s:.)/ (g_x_y)+\ng_x_y: \"Aé\\u000a\"\n");
    }

    #[test]
    fn newlines_end_rules_except_in_groups_and_after_bars() {
        let g = "root ::= (\n  \"a\" |\n  \"b\"\n) tail |\n  \"c\"\ntail ::= \"t\"";
        assert_eq!(to_lark(g).unwrap(), "start: g_root\ng_root: (\"a\" | \"b\") g_tail | \"c\"\ng_tail: \"t\"\n");
        // A bar that starts the next line is not GBNF (llama.cpp refuses it too).
        assert!(to_lark("root ::= \"a\"\n  | \"b\"\n").is_err());
    }

    #[test]
    fn names_of_any_case_stay_distinct() {
        let l = to_lark("root ::= A a\nA ::= \"1\"\na ::= \"2\"").unwrap();
        assert_eq!(l, "start: g_root\ng_root: g_a g_a_1\ng_a: \"1\"\ng_a_1: \"2\"\n");
    }

    #[test]
    fn bad_grammars_are_errors_naming_the_line() {
        for (g, want) in [
            ("root ::= foo", "never defined"),
            ("start ::= \"a\"", "no `root`"),
            ("root ::= \"a", "line 1: unterminated string"),
            ("root ::= \"a\"\nroot ::= \"b\"", "defined twice"),
            ("root ::= [z-a]", "below its start"),
            ("root ::= \"a\"{3,1}", "below its minimum"),
            ("root ::= \"a\"{99999}", "limited to"),
            ("root ::= (\"a\"", "expected `)`"),
            ("root ::= \"\\q\"", "unknown escape"),
            ("\nroot \"a\"", "line 2: expected `::=`"),
        ] {
            let e = to_lark(g).unwrap_err();
            assert!(e.contains(want), "{g:?}: {e}");
        }
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(100), ")".repeat(100));
        assert!(to_lark(&deep).unwrap_err().contains("nested too deeply"));
        assert!(!is_gbnf("start: \"a\" # x ::= y"));
    }
}
