//! Download progress for `slm pull`: an indicatif bar with rate and ETA on a terminal, plain
//! lines (at most one per 5 s, and one at the end) when stderr is a pipe or a log file.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    /// Bytes already on disk when this run started (a resume): not counted in the rate.
    resumed: u64,
    last_line: Instant,
}

impl Progress {
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = total.map(ProgressBar::new).unwrap_or_else(ProgressBar::new_spinner);
            let style =
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar
        });
        let now = Instant::now();
        Self { bar, label: label.into(), total, done: 0, started: now, resumed: 0, last_line: now }
    }

    /// The size, once the server tells it.
    pub fn set_total(&mut self, total: u64) {
        if self.total.is_none() {
            self.total = Some(total);
            if let Some(b) = &self.bar {
                b.set_length(total);
            }
        }
    }

    /// Bytes already on disk from an earlier run: counted as done, not in the rate.
    pub fn skip(&mut self, n: u64) {
        self.done += n;
        self.resumed += n;
        if let Some(b) = &self.bar {
            b.set_position(self.done);
            b.reset_eta();
        }
        if n > 0 && self.bar.is_none() {
            eprintln!("{}: resuming, {} already here", self.label, HumanBytes(n));
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.set_position(self.done),
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    /// `n` bytes thrown away (a server that ignored the Range request: start over).
    pub fn rewind(&mut self, n: u64) {
        self.done = self.done.saturating_sub(n);
        self.resumed = self.resumed.min(self.done);
        if let Some(b) = &self.bar {
            b.set_position(self.done);
        }
    }

    fn rate(&self) -> f64 {
        self.done.saturating_sub(self.resumed) as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn line(&self) -> String {
        let rate = self.rate();
        match self.total {
            Some(t) if t > 0 => {
                let eta = if rate > 0.0 { t.saturating_sub(self.done) as f64 / rate } else { f64::NAN };
                format!(
                    "{}: {} / {} ({:.0}%), {}/s, ETA {:.0} s",
                    self.label,
                    HumanBytes(self.done),
                    HumanBytes(t),
                    self.done as f64 * 100.0 / t as f64,
                    HumanBytes(rate as u64),
                    eta
                )
            }
            _ => format!("{}: {}, {}/s", self.label, HumanBytes(self.done), HumanBytes(rate as u64)),
        }
    }

    pub fn finish(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!(
            "{}: {} in {:.1} s ({}/s)",
            self.label,
            HumanBytes(self.done),
            self.started.elapsed().as_secs_f64(),
            HumanBytes(self.rate() as u64)
        );
    }
}
