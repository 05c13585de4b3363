//! The tags a chat template's reasoning ("thinking") models wrap their thoughts in: which
//! pair a template uses (Qwen3, QwQ and DeepSeek-R1 write `<think>…</think>`, Command R7B
//! `<|START_THINKING|>…<|END_THINKING|>`, Magistral `[THINK]…[/THINK]`), whether a rendered
//! prompt leaves the model inside an open block (DeepSeek-R1's and QwQ's templates end the
//! prompt with `<think>\n`), and closing that block when thinking is turned off — what
//! llama.cpp's `--reasoning off` does. `chat_template.rs` detects and applies them; the server
//! splits generated text at them (`reasoning_content`).

/// An open and a close tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasoningMarkers {
    pub open: &'static str,
    pub close: &'static str,
}

/// The pairs slm knows, most common first.
pub const KNOWN: &[ReasoningMarkers] = &[
    ReasoningMarkers { open: "<think>", close: "</think>" },
    ReasoningMarkers { open: "<|START_THINKING|>", close: "<|END_THINKING|>" },
    ReasoningMarkers { open: "[THINK]", close: "[/THINK]" },
    ReasoningMarkers { open: "<seed:think>", close: "</seed:think>" },
];

/// `<think>`: what a model without a reasoning template is read with when a request asks
/// for its thoughts to be parsed anyway.
pub const DEFAULT: ReasoningMarkers = KNOWN[0];

impl ReasoningMarkers {
    /// The pair a template's source writes: a template of a reasoning model names the close
    /// tag (it strips thoughts from history at it, or closes an empty block when thinking is
    /// off); templates of other models name neither.
    pub fn of_template(source: &str) -> Option<Self> {
        KNOWN.iter().copied().find(|m| source.contains(m.close) && source.contains(m.open))
    }

    /// Whether a prompt ends inside an open block (its last tag, whitespace aside, is `open`):
    /// generation then starts with thoughts.
    pub fn ends_open(&self, prompt: &str) -> bool {
        prompt.trim_end().ends_with(self.open)
    }

    /// Closes a block the template left open, so a model told not to think answers at once
    /// (DeepSeek-R1's template opens `<think>\n` whatever it is told: `<think>\n</think>`).
    pub fn close_if_open(&self, prompt: &mut String) {
        if self.ends_open(prompt) {
            prompt.push_str(self.close);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_their_pair_and_others_none() {
        let qwen3 = "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}";
        assert_eq!(ReasoningMarkers::of_template(qwen3), Some(KNOWN[0]));
        let r7b = "<|CHATBOT_TOKEN|>{%- if not enable_thinking -%}<|START_THINKING|><|END_THINKING|>{%- endif %}";
        assert_eq!(ReasoningMarkers::of_template(r7b), Some(KNOWN[1]));
        assert_eq!(ReasoningMarkers::of_template("{{ '<|im_start|>assistant\\n' }}"), None);
        // A close tag alone (a template that only strips `</think>` from history) is not enough.
        assert_eq!(ReasoningMarkers::of_template("{{ content.split('</think>')[-1] }}"), None);
    }

    #[test]
    fn an_open_block_is_closed_and_a_closed_one_left_alone() {
        let m = DEFAULT;
        let mut p = "<｜Assistant｜><think>\n".to_string();
        assert!(m.ends_open(&p));
        m.close_if_open(&mut p);
        assert_eq!(p, "<｜Assistant｜><think>\n</think>");
        assert!(!m.ends_open(&p));
        let mut q = "<|im_start|>assistant\n<think>\n\n</think>\n\n".to_string();
        m.close_if_open(&mut q);
        assert_eq!(q, "<|im_start|>assistant\n<think>\n\n</think>\n\n");
    }
}
