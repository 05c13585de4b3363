//! `OutputText`: a sequence's generated text as it grows, how much of it has been released to
//! the caller, and the stop strings that end it. Text that might be the start of a stop string
//! is held back until it cannot be (or the sequence ends), so released text never contains
//! any part of a stop that then completes; a stop string is found however the text was cut
//! into pieces (tokens), and the text before it is released, the stop itself never. The
//! `Sequence` feeds it the detokenizer's output, which is always whole UTF-8.
//!
//! ```text
//!  stops ["END"]   pieces: "abc E" | "N" | "D more"
//!  released:       "abc "  | ""  | (stopped; nothing after "abc ")
//! ```

#[derive(Debug, Default)]
pub struct OutputText {
    text: String,
    num_released_bytes: usize,
    stops: Vec<String>,
}

/// What a piece of text decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Text now final (may be empty: it is held while it may start a stop string).
    Released(String),
    /// A stop string completed: the unreleased text before it is the last of the output,
    /// and the stop string that matched.
    Stopped(String, String),
}

impl OutputText {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Self::default() }
    }

    /// The whole generated text so far, held-back text included (grammars read this).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn push(&mut self, piece: &str) -> Pushed {
        let released = self.num_released_bytes;
        self.text.push_str(piece);
        if let Some((at, stop)) = self.find_stop(released) {
            let stop = self.stops[stop].clone();
            return Pushed::Stopped(self.take_unreleased(at), stop);
        }
        let safe = self.text.len() - self.stop_prefix_suffix_len();
        Pushed::Released(self.take_unreleased(safe))
    }

    /// Everything not yet released: the sequence ended for another reason.
    pub fn take_rest(&mut self) -> String {
        self.take_unreleased(self.text.len())
    }

    fn take_unreleased(&mut self, upto: usize) -> String {
        let upto = upto.max(self.num_released_bytes);
        let s = self.text[self.num_released_bytes..upto].to_string();
        self.num_released_bytes = upto;
        s
    }

    /// Earliest stop-string occurrence that ends in text not yet released, and which stop.
    fn find_stop(&self, released: usize) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(k, s)| {
                // A match may start in released text only if it ends after it; released
                // text never contains a whole stop string.
                let from = released.saturating_sub(s.len() - 1);
                let from = (from..=released).find(|&i| self.text.is_char_boundary(i)).unwrap_or(released);
                self.text[from..].find(s.as_str()).map(|i| (from + i, k))
            })
            .min()
    }

    /// Length of the longest suffix of the text that is a proper prefix of a stop string:
    /// that text must wait, it may become a stop. (A stop string starts on a character
    /// boundary, so the held suffix does too.)
    fn stop_prefix_suffix_len(&self) -> usize {
        let t = self.text.as_bytes();
        let mut best = 0;
        for s in &self.stops {
            let s = s.as_bytes();
            for len in (1..s.len().min(t.len() + 1)).rev() {
                if len <= best {
                    break;
                }
                if t[t.len() - len..] == s[..len] {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`; returns every released text (in order) and the final text if stopped.
    fn feed(stops: &[&str], pieces: &[&str]) -> (Vec<String>, Option<String>) {
        let mut o = OutputText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut released = Vec::new();
        for p in pieces {
            match o.push(p) {
                Pushed::Released(r) => released.push(r),
                Pushed::Stopped(r, _) => return (released, Some(r)),
            }
        }
        (released, None)
    }

    #[test]
    fn the_stop_that_matched_is_reported() {
        let mut o = OutputText::new(vec!["END".into(), "\n\n".into()]);
        assert_eq!(o.push("abc\n"), Pushed::Released("abc".into()));
        assert_eq!(o.push("\nx END"), Pushed::Stopped("".into(), "\n\n".into()));
    }

    #[test]
    fn a_stop_split_across_tokens_is_held_then_cut() {
        let (released, stopped) = feed(&["END"], &["abc E", "N", "D more"]);
        assert_eq!(released, ["abc ", ""]);
        assert_eq!(stopped.as_deref(), Some(""));
        // A false start is released as soon as it cannot be a stop.
        let (released, stopped) = feed(&["END"], &["abc E", "N", "x"]);
        assert_eq!((released.concat(), stopped), ("abc ENx".to_string(), None));
        assert_eq!(released, ["abc ", "", "ENx"]);
    }

    #[test]
    fn the_earliest_complete_stop_wins_among_overlapping_ones() {
        assert_eq!(feed(&["ab", "bc"], &["a", "bc"]).1.as_deref(), Some(""));
        assert_eq!(feed(&["abcd", "bc"], &["xa", "bc"]), (vec!["x".into()], Some("a".into())));
        // Held for the longer stop, released when neither can complete.
        let (released, stopped) = feed(&["abcd", "bce"], &["x", "ab", "c", "z"]);
        assert_eq!((released, stopped), (vec!["x".into(), "".into(), "".into(), "abcz".into()], None));
        // Text before a stop that begins inside held text.
        assert_eq!(feed(&["<end>"], &["hi <", "e", "nd> bye"]), (vec!["hi ".into(), "".into()], Some("".into())));
    }

    #[test]
    fn multibyte_characters_are_held_and_cut_on_their_boundaries() {
        // "é" (2 bytes) may start "é!": held whole, never half.
        let (released, stopped) = feed(&["é!"], &["café", "!"]);
        assert_eq!((released, stopped.as_deref()), (vec!["caf".to_string()], Some("")));
        let (released, stopped) = feed(&["日本"], &["今日", "は"]);
        assert_eq!((released, stopped), (vec!["今".to_string(), "日は".to_string()], None));
        let (released, stopped) = feed(&["🙂x"], &["a🙂", "🙂x", "b"]);
        assert_eq!((released, stopped.as_deref()), (vec!["a".to_string()], Some("🙂")));
    }

    #[test]
    fn released_text_never_holds_a_stop_however_the_text_is_cut() {
        let text = "Xin chào ### thế giới ### END của văn bản";
        let stops = ["###", "END", "giới #"];
        let chars: Vec<char> = text.chars().collect();
        // Every two-cut split of the text into three pieces (every third one under Miri).
        let step = if cfg!(miri) { 3 } else { 1 };
        for i in (0..=chars.len()).step_by(step) {
            for j in (i..=chars.len()).step_by(step) {
                let pieces: Vec<String> =
                    [&chars[..i], &chars[i..j], &chars[j..]].iter().map(|c| c.iter().collect()).collect();
                let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
                let (released, stopped) = feed(&stops, &refs);
                let out = released.concat() + stopped.as_deref().unwrap_or("");
                assert_eq!(out, "Xin chào ", "cut at {i}, {j}");
                assert!(stopped.is_some());
            }
        }
    }

    #[test]
    fn empty_stops_are_ignored_and_the_rest_is_taken_at_the_end() {
        let mut o = OutputText::new(vec![String::new(), "zz".into()]);
        assert_eq!(o.push("abz"), Pushed::Released("ab".into()));
        assert_eq!(o.take_rest(), "z");
        assert_eq!(o.text(), "abz");
    }
}
