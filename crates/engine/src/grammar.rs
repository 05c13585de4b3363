//! Constrained decoding. A request may carry a `ConstraintSpec` — a JSON Schema, a Lark grammar
//! (llguidance's dialect, which embeds JSON Schemas with `%json {…}`) or a regex — and
//! optionally triggers. `GrammarCompiler` (one per model, built on first use: the token trie
//! over a 150k vocabulary takes a moment) compiles it with llguidance against the model's
//! vocabulary; callers compile before they submit (the server off its async workers), so a bad
//! schema is an error before anything runs. The resulting `Constraint` lives in its `Sequence`: before each sampling the engine asks
//! it for a mask of allowed tokens, after it tells it the sampled token.
//!
//! Triggers serve function calling in `auto` mode: the text is free until a trigger (a regular
//! expression: the template's `<tool_call>` tag, or the start of a JSON call naming an offered
//! tool) matches the output; from there on the grammar, which must accept the output from the
//! match's first byte, is enforced.
//! If the output so far cannot be fed to the grammar the constraint steps aside and the text
//! stays free (the server's lenient parser still gets its chance).

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::error::{EngineError, Result};
use crate::tokenizer::{TokenType, Tokenizer};

#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    JsonSchema(serde_json::Value),
    Lark(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConstraintSpec {
    pub grammar: Grammar,
    /// Empty: enforced from the first token. Otherwise free text until one of these regular
    /// expressions matches the output; the grammar then applies from the match's first byte.
    pub triggers: Vec<String>,
}

impl ConstraintSpec {
    pub fn new(grammar: Grammar) -> Self {
        Self { grammar, triggers: Vec::new() }
    }
}

/// The model's vocabulary as llguidance sees it.
struct VocabEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer.encode(&String::from_utf8_lossy(s), false, false).unwrap_or_default()
    }
}

/// Builds llguidance's token trie straight from the GGUF vocabulary: each token's bytes, with
/// control tokens marked special (0xFF prefix) so grammars can only produce them by name.
/// `vocab_size` is the model's logit count, which may exceed the tokenizer's.
fn build_env(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> TokEnv {
    let words: Vec<Vec<u8>> = (0..vocab_size as u32)
        .map(|id| match tokenizer.token_type(id) {
            None | Some(TokenType::Unused) => Vec::new(),
            Some(TokenType::Control | TokenType::Unknown) => {
                let b = tokenizer.token_bytes(id, true);
                if b.is_empty() {
                    Vec::new()
                } else {
                    [&[TokTrie::SPECIAL_TOKEN_MARKER][..], b].concat()
                }
            }
            Some(_) => tokenizer.token_bytes(id, true).to_vec(),
        })
        .collect();
    let eog = tokenizer.end_of_generation();
    let eos = eog.first().copied().or(tokenizer.eos).unwrap_or(0);
    let info = TokRxInfo { tok_bos: tokenizer.bos, ..TokRxInfo::new(vocab_size as u32, eos) };
    let eos_tokens = if eog.is_empty() { vec![eos] } else { eog.to_vec() };
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos_tokens);
    Arc::new(VocabEnv { trie, tokenizer })
}

/// The largest grammar or schema text compiled (a schema with thousands of properties fits).
const MAX_GRAMMAR_BYTES: usize = 1 << 20;
/// The grammar compiler's stack: llguidance recurses per nesting level and rule.
const COMPILE_STACK_BYTES: usize = 256 << 20;

/// Compiles constraints for one model; the vocabulary index is built on first use.
pub struct GrammarCompiler {
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    factory: OnceLock<ParserFactory>,
}

impl GrammarCompiler {
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Self {
        Self { tokenizer, vocab_size, factory: OnceLock::new() }
    }

    /// Builds the vocabulary index now (it takes about a second on a 150k vocabulary), so the
    /// first constrained request does not wait for it.
    pub fn warm_up(&self) {
        self.factory();
    }

    fn factory(&self) -> &ParserFactory {
        self.factory.get_or_init(|| {
            let t = std::time::Instant::now();
            let env = build_env(self.tokenizer.clone(), self.vocab_size);
            let mut f = ParserFactory::new_simple(&env).expect("llguidance accepts the default token slices");
            f.quiet();
            tracing::info!("grammar vocabulary index built in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
            f
        })
    }

    /// Compiles `spec`; the error names what is wrong with the grammar or schema. Whatever
    /// the spec holds, this returns: its size is bounded first, and llguidance (whose compiler
    /// recurses with the grammar's depth) runs on a thread with a stack sized for the bound,
    /// so no schema can overflow the caller's stack. A grammar that allows no output at all
    /// is refused, not dropped: the output either obeys it or there is none.
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<Constraint> {
        let size = match &spec.grammar {
            Grammar::JsonSchema(s) => s.to_string().len(),
            Grammar::Lark(s) | Grammar::Regex(s) => s.len(),
        };
        if size > MAX_GRAMMAR_BYTES {
            return Err(EngineError::InvalidGrammar(format!(
                "the grammar or schema is {size} bytes; at most {MAX_GRAMMAR_BYTES} are accepted"
            )));
        }
        // Building the vocabulary index first keeps the helper thread's work to the grammar.
        self.factory();
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("slm-grammar".into())
                .stack_size(COMPILE_STACK_BYTES)
                .spawn_scoped(s, || self.compile_here(spec))
                .map_err(|e| EngineError::Internal(format!("cannot start the grammar compiler: {e}")))?
                .join()
                .unwrap_or_else(|_| Err(EngineError::InvalidGrammar("the grammar could not be compiled".into())))
        })
    }

    fn compile_here(&self, spec: &ConstraintSpec) -> Result<Constraint> {
        let grammar = match &spec.grammar {
            Grammar::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(EngineError::InvalidGrammar("a JSON Schema must be an object".into()));
                }
                TopLevelGrammar::from_json_schema(schema.clone())
            }
            Grammar::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
        };
        let parser = self.factory().create_parser(grammar).map_err(|e| EngineError::InvalidGrammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::InvalidGrammar(e));
        }
        // The first mask: an error or no allowed token means no output can satisfy it.
        match matcher.clone().compute_mask() {
            Ok(m) if m.num_set() > 0 => {}
            Ok(_) => return Err(EngineError::InvalidGrammar("the grammar matches no output".into())),
            Err(e) => return Err(EngineError::InvalidGrammar(format!("the grammar cannot be applied: {e}"))),
        }
        let trigger = match spec.triggers.is_empty() {
            true => None,
            false => Some(
                regex::Regex::new(&spec.triggers.iter().map(|t| format!("(?:{t})")).collect::<Vec<_>>().join("|"))
                    .map_err(|e| EngineError::InvalidGrammar(format!("trigger: {e}")))?,
            ),
        };
        let env = self.factory().tok_env().clone();
        Ok(Constraint {
            matcher,
            trigger,
            state: if spec.triggers.is_empty() { State::Active } else { State::Waiting },
            env,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Free text until a trigger appears.
    Waiting,
    Active,
    /// The grammar is complete: the sequence should end.
    Done,
    /// The output left the grammar (only possible before activation): no longer enforced.
    Abandoned,
    /// The grammar, once enforced, allowed nothing more or refused its own token: the
    /// sequence cannot go on within it and fails (never silently unconstrained).
    Failed,
}

/// One sequence's constraint: the llguidance matcher and where it stands. Cloning gives an
/// independent copy in the same state (the `n` choices of one request share one compile).
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    trigger: Option<regex::Regex>,
    state: State,
    env: TokEnv,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("state", &self.state).field("trigger", &self.trigger).finish()
    }
}

impl Constraint {
    /// Allowed next tokens, `None` when nothing is enforced now, or an error when the
    /// grammar allows no continuation of the output (the request cannot be honoured).
    pub fn mask(&mut self) -> Result<Option<SimpleVob>> {
        match self.state {
            State::Active => {}
            State::Failed => return Err(self.failure()),
            State::Waiting | State::Done | State::Abandoned => return Ok(None),
        }
        match self.matcher.compute_mask() {
            Ok(m) if m.num_set() > 0 => Ok(Some(m)),
            Ok(_) | Err(_) => {
                self.state = State::Failed;
                Err(self.failure())
            }
        }
    }

    fn failure(&self) -> EngineError {
        let why = self.matcher.get_error().unwrap_or_else(|| "no token can continue the output".into());
        EngineError::InvalidGrammar(format!("the output cannot continue within the grammar: {why}"))
    }

    /// Sets every logit the mask disallows to -inf.
    pub fn apply(mask: &SimpleVob, logits: &mut [f32]) {
        mask.iter_unset_entries(|i| {
            if let Some(x) = logits.get_mut(i) {
                *x = f32::NEG_INFINITY;
            }
        });
    }

    /// Tells the constraint the sampled token; `text` is the whole output so far (including
    /// this token).
    pub fn accept(&mut self, token: u32, text: &str) {
        match self.state {
            State::Active => {
                if self.matcher.consume_token(token).is_err() {
                    tracing::warn!("grammar rejected a masked token: {}", self.matcher.get_error().unwrap_or_default());
                    self.state = State::Failed;
                }
            }
            State::Waiting => {
                // The whole output is searched: a match may start well before this token (an
                // opening code fence, say) and only become a match with it.
                let Some(at) = self.trigger.as_ref().and_then(|t| t.find(text)).map(|m| m.start()) else { return };
                // Feed the grammar the output from the trigger on, as tokens of our own (the
                // grammar checks bytes, not how they were split). Greedy over the vocabulary's
                // bytes: a tokenizer's own encode may add a SentencePiece space prefix.
                let tail = self.env.tok_trie().greedy_tokenize(&text.as_bytes()[at..]);
                self.state = match self.matcher.try_consume_tokens(&tail) {
                    Ok(n) if n == tail.len() => State::Active,
                    _ => State::Abandoned,
                };
            }
            State::Done | State::Abandoned | State::Failed => return,
        }
        if self.state == State::Active && self.matcher.is_stopped() {
            self.state = State::Done;
        }
    }

    /// The grammar is complete and allows nothing more: the sequence is finished.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}
