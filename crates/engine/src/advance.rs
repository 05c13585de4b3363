//! A sequence's share of postprocessing: its logits rows become tokens. Row by row it
//! samples with the sequence's own sampler (grammar mask, penalties, seeded RNG), appends the
//! token, applies the stop conditions and sends the events. With a draft (speculative
//! decoding) row j's logits are valid only if the drafted tokens before it were the ones
//! sampled, so the walk goes on to the next row only while the sampled token equals the
//! drafted one: what comes out is exactly what plain decode would have produced, one step
//! at a time. `EngineCore::postprocess` runs this for every sampling sequence on the pool.

use crate::error::EngineError;
use crate::request::{Event, Finished, TokenEvent};
use crate::sampling::Sampled;
use crate::sequence::{Appended, Sequence};
use crate::tokenizer::Tokenizer;

/// Why a sequence leaves the engine (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Finished,
    Aborted,
    Failed,
}

/// What one step did to a sequence.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Advanced {
    /// Tokens appended (1 + accepted drafts, or fewer when the sequence ended).
    pub num_tokens: usize,
    /// Drafted tokens compared with the sampled ones, and how many of them matched.
    pub num_tested: usize,
    pub num_accepted: usize,
    /// Set when the sequence is done (finished, or its caller went away).
    pub exit: Option<Exit>,
}

/// Samples `logits` (`1 + draft.len()` rows of the vocabulary) for `seq` as described above.
/// An error (a grammar that allows nothing) ends the walk; tokens already appended stay sent.
pub fn advance(seq: &mut Sequence, logits: &[f32], draft: &[u32], tok: &Tokenizer) -> Result<Advanced, EngineError> {
    let vocab = logits.len() / (draft.len() + 1);
    let mut out = Advanced::default();
    for (j, row) in logits.chunks_exact(vocab).enumerate() {
        let s = seq.sample(row)?;
        let matched = draft.get(j) == Some(&s.token);
        if j < draft.len() {
            out.num_tested += 1;
            out.num_accepted += matched as usize;
        }
        out.num_tokens += 1;
        if let Some(exit) = emit(seq, s, tok) {
            out.exit = Some(exit);
            break;
        }
        if !matched {
            break;
        }
    }
    Ok(out)
}

/// Appends one sampled token and sends its events; `Some` when the sequence is done.
fn emit(seq: &mut Sequence, s: Sampled, tok: &Tokenizer) -> Option<Exit> {
    let token_event =
        |text: String| TokenEvent { token: s.token, text, logprob: s.logprob, top_logprobs: s.top.clone() };
    match seq.append(s.token, tok) {
        Appended::Continue(text) => match seq.events.send(Event::Token(token_event(text))) {
            Ok(()) => None,
            Err(_) => Some(Exit::Aborted), // the caller went away
        },
        Appended::Finished { reason, text, stop_token, stop_string } => {
            let tail = if stop_token.is_none() {
                let _ = seq.events.send(Event::Token(token_event(text)));
                String::new()
            } else {
                text
            };
            let _ = seq.events.send(Event::Finished(Finished {
                reason,
                text: tail,
                num_prompt_tokens: seq.num_prompt_tokens,
                num_generated_tokens: seq.num_generated_tokens(),
                num_cached_tokens: seq.num_cached_tokens,
                stop_token: stop_token.map(|_| token_event(String::new())),
                stop_string,
            }));
            Some(Exit::Finished)
        }
    }
}
