//! llama.cpp's streaming extras, which a streamed request may ask for: `prompt_progress` chunks
//! while its prompt is evaluated (`return_progress`) and `timings` on every chunk
//! (`timings_per_token`). Per choice, a clock fed by the engine's events; per event, the fields
//! its chunks carry. The chat, text-completion and `/completion` streams call it, each with its
//! own chunk shape; nothing else of a chunk depends on it.

use std::time::Instant;

use axum::response::sse::Event as SseEvent;
use serde_json::{json, Value};
use slm_engine::Event;

use crate::llama_api::Timings;

/// What a streamed request asked for, and one clock per choice.
pub struct Telemetry {
    return_progress: bool,
    timings_per_token: bool,
    clocks: Vec<Clock>,
}

impl Telemetry {
    /// `num_prompt`: each choice's prompt tokens, by choice index.
    pub fn new(return_progress: bool, timings_per_token: bool, start: Instant, num_prompt: &[usize]) -> Self {
        let clocks = num_prompt.iter().map(|&n| Clock::new(start, n)).collect();
        Self { return_progress, timings_per_token, clocks }
    }

    /// Notes choice `index`'s event; returns what the chunks made for it carry.
    pub fn note(&mut self, index: usize, e: &Event) -> Extras {
        let now = Instant::now();
        let Some(c) = self.clocks.get_mut(index) else { return Extras::default() };
        c.on(e, now);
        let progress = match e {
            Event::Progress(p) if self.return_progress => Some(json!({
                "total": p.num_total,
                "cache": p.num_cached,
                "processed": p.num_processed,
                "time_ms": (now - c.start).as_millis() as u64,
            })),
            _ => None,
        };
        Extras { timings: self.timings_per_token.then(|| c.timings(now)), progress }
    }

    /// The first choice's timings now, for a request's closing (usage) chunk.
    pub fn timings(&self) -> Option<Timings> {
        let c = self.clocks.first().filter(|_| self.timings_per_token)?;
        Some(c.timings(Instant::now()))
    }
}

/// The fields an event's chunks carry besides their own.
#[derive(Default)]
pub struct Extras {
    pub timings: Option<Timings>,
    /// Set for a progress event the request asked to see: its chunk is due.
    pub progress: Option<Value>,
}

impl Extras {
    /// `chunk` as SSE data, with these fields added.
    pub fn data<T: serde::Serialize>(&self, chunk: &T) -> SseEvent {
        let mut v = serde_json::to_value(chunk).expect("serializable");
        if let Some(t) = &self.timings {
            v["timings"] = serde_json::to_value(t).expect("serializable");
        }
        if let Some(p) = &self.progress {
            v["prompt_progress"] = p.clone();
        }
        crate::stream::data(&v)
    }
}

/// One choice's clock, as llama.cpp keeps a slot's: the prompt's time runs from the engine's
/// admission (its first progress report; without reports, the request's arrival) to the first
/// token, the generation's from the first token on.
struct Clock {
    start: Instant,
    prompt_start: Option<Instant>,
    first: Option<Instant>,
    num_prompt: usize,
    num_cached: usize,
    num_processed: usize,
    num_predicted: usize,
}

impl Clock {
    fn new(start: Instant, num_prompt: usize) -> Self {
        Self { start, prompt_start: None, first: None, num_prompt, num_cached: 0, num_processed: 0, num_predicted: 0 }
    }

    fn on(&mut self, e: &Event, now: Instant) {
        match e {
            Event::Progress(p) => {
                self.prompt_start.get_or_insert(now);
                (self.num_cached, self.num_processed) = (p.num_cached, p.num_processed);
            }
            Event::Token(_) => {
                self.first.get_or_insert(now);
                self.num_predicted += 1;
                self.num_processed = self.num_prompt;
            }
            Event::Finished(f) => (self.num_cached, self.num_processed) = (f.num_cached_tokens, f.num_prompt_tokens),
            Event::Error(_) => {}
        }
    }

    fn timings(&self, now: Instant) -> Timings {
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let prompt_start = self.prompt_start.unwrap_or(self.start);
        Timings::new(
            self.num_cached,
            self.num_processed.saturating_sub(self.num_cached),
            ms(prompt_start, self.first.unwrap_or(now)),
            self.num_predicted,
            self.first.map_or(0.0, |f| ms(f, now)),
        )
    }
}

#[cfg(test)]
mod tests {
    use slm_engine::{PromptProgress, TokenEvent};

    use super::*;

    fn progress(cache: usize, processed: usize) -> Event {
        Event::Progress(PromptProgress { num_total: 100, num_cached: cache, num_processed: processed })
    }

    fn token() -> Event {
        Event::Token(TokenEvent { token: 1, text: "a".into(), logprob: 0.0, top_logprobs: vec![] })
    }

    #[test]
    fn timings_start_at_zero_and_never_go_back() {
        let mut t = Telemetry::new(true, true, Instant::now(), &[100]);
        let first = t.note(0, &progress(32, 32));
        let ft = first.timings.unwrap();
        assert_eq!((ft.prompt_n, ft.prompt_ms, ft.predicted_n, ft.predicted_ms), (0, 0.0, 0, 0.0));
        assert_eq!(first.progress.unwrap()["cache"], 32);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mid = t.note(0, &progress(32, 96)).timings.unwrap();
        assert!(mid.prompt_ms > 0.0 && mid.prompt_n == 64);
        let tok = t.note(0, &token());
        assert!(tok.progress.is_none());
        let tt = tok.timings.unwrap();
        assert!((tt.prompt_n, tt.predicted_n) == (68, 1) && tt.prompt_ms >= mid.prompt_ms);
    }

    #[test]
    fn nothing_is_added_unless_asked() {
        let mut t = Telemetry::new(false, false, Instant::now(), &[10]);
        let e = t.note(0, &progress(0, 0));
        assert!(e.timings.is_none() && e.progress.is_none() && t.timings().is_none());
        let mut only_timings = Telemetry::new(false, true, Instant::now(), &[10]);
        let e = only_timings.note(0, &progress(0, 0));
        assert!(e.progress.is_none(), "a progress chunk only with return_progress");
        assert!(e.timings.is_some() && only_timings.timings().is_some());
        assert!(only_timings.note(7, &token()).timings.is_none(), "an unknown choice is ignored");
    }
}
