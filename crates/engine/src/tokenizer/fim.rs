//! Fill-in-the-middle: the FIM tokens a code model was trained with, read from the GGUF
//! (`tokenizer.ggml.fim_*_token_id`) or, when the keys are missing, found by the token texts
//! the known families use (as llama.cpp's vocabulary loader does); and the infill prompt built
//! from them as llama.cpp's server builds it, so an editor gets the same completion from slm.
//! The server calls `Tokenizer::infill` for `/infill` and for `suffix` on `/v1/completions`.

use super::Tokenizer;
use crate::error::{EngineError, Result};
use crate::loader::Gguf;

/// The FIM roles; `pre`, `suf` and `mid` are needed for infill, the rest are optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FimTokens {
    pub pre: Option<u32>,
    pub suf: Option<u32>,
    pub mid: Option<u32>,
    pub pad: Option<u32>,
    /// Starts the repository name of repo-level context.
    pub rep: Option<u32>,
    /// Starts each file of repo-level context.
    pub sep: Option<u32>,
}

/// Per role: its GGUF key, the deprecated key some converters wrote, and the texts the known
/// families use for it (llama.cpp's vocabulary loader's tables).
const ROLES: [(&str, Option<&str>, &[&str]); 6] = [
    (
        "tokenizer.ggml.fim_pre_token_id",
        Some("tokenizer.ggml.prefix_token_id"),
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_suf_token_id",
        Some("tokenizer.ggml.suffix_token_id"),
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_mid_token_id",
        Some("tokenizer.ggml.middle_token_id"),
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    ("tokenizer.ggml.fim_pad_token_id", None, &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"]),
    ("tokenizer.ggml.fim_rep_token_id", None, &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"]),
    ("tokenizer.ggml.fim_sep_token_id", None, &["<|file_sep|>"]),
];

impl FimTokens {
    pub(super) fn from_gguf(g: &Gguf, vocab: &std::collections::HashMap<String, u32>, n: usize) -> Result<Self> {
        let mut ids = [None; 6];
        for (slot, (key, old_key, texts)) in ids.iter_mut().zip(ROLES) {
            let id = |k: &str| -> Result<Option<u32>> {
                Ok(g.opt_usize(k)?.map(|v| v as u32).filter(|&v| (v as usize) < n))
            };
            let by_key = match old_key {
                Some(old) => id(old)?.or(id(key)?),
                None => id(key)?,
            };
            *slot = by_key.or_else(|| texts.iter().find_map(|t| vocab.get(*t).copied()));
        }
        let [pre, suf, mid, pad, rep, sep] = ids;
        Ok(Self { pre, suf, mid, pad, rep, sep })
    }

    /// The FIM tokens that end generation (llama.cpp counts them as end-of-generation: a
    /// model that emits one has finished its middle).
    pub fn end_of_generation(&self) -> impl Iterator<Item = u32> {
        [self.pad, self.rep, self.sep].into_iter().flatten()
    }

    /// The three tokens infill needs, or `None` for a model trained without FIM.
    pub fn infill(&self) -> Option<(u32, u32, u32)> {
        Some((self.pre?, self.suf?, self.mid?))
    }
}

/// One file of repo-level context (`input_extra`).
#[derive(Debug, Clone)]
pub struct ExtraFile {
    pub filename: String,
    pub text: String,
}

/// What an infill prompt is made of.
#[derive(Debug, Clone, Default)]
pub struct InfillInput<'a> {
    pub prefix: &'a str,
    pub suffix: &'a str,
    /// Text that follows the prefix (llama.cpp's `prompt` on `/infill`).
    pub prompt: &'a str,
    pub extra: &'a [ExtraFile],
}

/// Token budgets of the layout: the batch the FIM part must fit (prefix : suffix = 3 : 1) and
/// the context the repo-level context may fill, leaving room for `max_tokens` twice over.
#[derive(Debug, Clone, Copy)]
pub struct InfillBudget {
    pub num_batch: usize,
    pub num_ctx: usize,
    pub max_tokens: usize,
}

/// The separator between context chunks for a model without a file-separator token.
const CHUNK_SEPARATOR: &str = "\n\n--- snippet ---\n\n";

/// Lays out the infill prompt (llama.cpp's server layout):
/// `[tail of extra] [BOS] PRE prefix-tail prompt SUF suffix-head MID`. The prefix keeps its
/// end and the suffix its start, the parts nearest the cursor.
#[allow(clippy::too_many_arguments)]
pub fn layout(
    (pre, suf, mid): (u32, u32, u32),
    bos: Option<u32>,
    mut prefix: Vec<u32>,
    mut suffix: Vec<u32>,
    prompt: &[u32],
    extra: &[u32],
    b: InfillBudget,
) -> Vec<u32> {
    let num_prefix = prefix.len().min(3 * (b.num_batch / 4));
    let num_suffix = suffix.len().min((b.num_batch / 4).saturating_sub(2 + prompt.len()));
    let num_extra = extra.len().min(b.num_ctx.saturating_sub(b.num_batch + 2 * b.max_tokens));
    prefix.drain(..prefix.len() - num_prefix);
    suffix.truncate(num_suffix);
    let mut out = Vec::with_capacity(num_extra + num_prefix + num_suffix + prompt.len() + 4);
    out.extend_from_slice(&extra[extra.len() - num_extra..]);
    out.extend(bos);
    out.push(pre);
    out.extend(prefix);
    out.extend_from_slice(prompt);
    out.push(suf);
    out.extend(suffix);
    out.push(mid);
    out
}

impl Tokenizer {
    pub fn fim(&self) -> &FimTokens {
        &self.fim
    }

    /// The infill prompt for `input`. Prefix, suffix and context files are tokenized as plain
    /// text (no special tokens parsed from them, so code that spells `<|fim_prefix|>` cannot
    /// steer the layout).
    pub fn infill(&self, input: &InfillInput, budget: InfillBudget) -> Result<Vec<u32>> {
        let fim = self.fim.infill().ok_or_else(|| {
            EngineError::InvalidRequest(
                "this model has no fill-in-the-middle tokens (it was not trained for infill)".into(),
            )
        })?;
        let plain = |t: &str| self.encode(t, false, false);
        let mut extra = Vec::new();
        if let Some(rep) = self.fim.rep {
            extra.push(rep);
            extra.extend(plain("myproject\n")?);
        }
        for f in input.extra {
            match self.fim.sep {
                Some(sep) => {
                    extra.push(sep);
                    extra.extend(plain(&format!("{}\n", f.filename))?);
                }
                None => extra.extend(plain(CHUNK_SEPARATOR)?),
            }
            extra.extend(plain(&f.text)?);
        }
        if let Some(sep) = self.fim.sep {
            // The file being edited: its name is not sent, so a placeholder stands for it.
            extra.push(sep);
            extra.extend(plain("filename\n")?);
        }
        let bos = if self.add_bos { self.bos } else { None };
        // The prompt (text after the prefix) may hold special tokens, as llama.cpp reads it.
        let (prefix, suffix, prompt) =
            (plain(input.prefix)?, plain(input.suffix)?, self.encode(input.prompt, false, true)?);
        Ok(layout(fim, bos, prefix, suffix, &prompt, &extra, budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIM: (u32, u32, u32) = (900, 901, 902);

    #[test]
    fn the_layout_is_prefix_prompt_suffix_middle_after_the_extra_context() {
        let b = InfillBudget { num_batch: 2048, num_ctx: 8192, max_tokens: 64 };
        let out = layout(FIM, Some(1), vec![10, 11], vec![20, 21], &[30], &[40, 41], b);
        assert_eq!(out, vec![40, 41, 1, 900, 10, 11, 30, 901, 20, 21, 902]);
        let out = layout(FIM, None, vec![], vec![], &[], &[], b);
        assert_eq!(out, vec![900, 901, 902]);
    }

    #[test]
    fn the_prefix_keeps_its_end_the_suffix_its_start_and_extra_its_tail() {
        // Batch 16: the prefix may take 12 tokens, the suffix 4 - 2 - prompt.
        let b = InfillBudget { num_batch: 16, num_ctx: 40, max_tokens: 8 };
        let prefix: Vec<u32> = (100..130).collect();
        let suffix: Vec<u32> = (200..230).collect();
        let extra: Vec<u32> = (300..330).collect();
        let out = layout(FIM, None, prefix, suffix, &[7], &extra, b);
        // Extra: 40 - 16 - 16 = 8 tokens, the last ones.
        assert_eq!(&out[..8], &(322..330).collect::<Vec<_>>()[..]);
        assert_eq!(out[8], 900);
        assert_eq!(&out[9..21], &(118..130).collect::<Vec<_>>()[..]);
        assert_eq!(&out[21..], &[7, 901, 200, 902]);
        // No room at all for the suffix or the extra context: the markers stay.
        let tight = InfillBudget { num_batch: 4, num_ctx: 4, max_tokens: 100 };
        assert_eq!(
            layout(FIM, None, vec![1, 2, 3, 4], vec![5], &[6, 6], &[9], tight),
            vec![900, 2, 3, 4, 6, 6, 901, 902]
        );
    }
}
