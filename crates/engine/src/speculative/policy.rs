//! How many drafted tokens each sequence verifies in a step. Two things are learned online:
//! what a step costs as a function of its rows (`CostModel`: a linear fit of the forward time
//! over recent steps, so it follows the machine, the model and the context length), and how
//! often each sequence's drafts are accepted (`Acceptance`). `draft_lengths` then adds draft
//! rows one at a time, the most promising first, while a row's expected tokens per unit of
//! cost beat the step's average — so a single stream on a bandwidth-bound box verifies long
//! drafts, a full batch on a compute-bound one verifies none, and a sequence whose drafts keep
//! failing stops drafting. Nothing here affects which tokens come out, only how fast.

/// Step time ≈ `fixed + per_row · rows`, fitted by exponentially weighted least squares.
#[derive(Debug, Clone)]
pub struct CostModel {
    /// Weighted sums of 1, rows, rows², time and rows·time.
    s: [f64; 5],
    /// What a row costs relative to a one-row step before enough varied steps are seen.
    prior_row_cost: f64,
}

/// Weight of the oldest steps decays by this factor per step (a memory of ~100 steps).
const DECAY: f64 = 0.99;

impl CostModel {
    pub fn new(prior_row_cost: f64) -> Self {
        Self { s: [0.0; 5], prior_row_cost }
    }

    pub fn observe(&mut self, rows: usize, ns: u64) {
        let (x, y) = (rows as f64, ns as f64);
        for (s, v) in self.s.iter_mut().zip([1.0, x, x * x, y, x * y]) {
            *s = *s * DECAY + v;
        }
    }

    /// The cost of one more row as a fraction of a one-row step's cost.
    pub fn row_cost(&self) -> f64 {
        let [w, sx, sxx, sy, sxy] = self.s;
        if w < 8.0 {
            return self.prior_row_cost;
        }
        let (mx, my) = (sx / w, sy / w);
        let var = sxx / w - mx * mx;
        // Steps of (nearly) one size say nothing about the slope: keep the prior's.
        if var < 0.5 {
            return self.prior_row_cost;
        }
        let per_row = ((sxy / w - mx * my) / var).max(0.0);
        let fixed = my - per_row * mx;
        if fixed <= 0.0 {
            return 1.0; // time grows with rows from the first one: compute-bound
        }
        (per_row / (fixed + per_row)).clamp(0.002, 1.0)
    }
}

impl CostModel {
    /// What a one-row step takes, in nanoseconds (None before enough steps are seen).
    pub fn one_row_step_ns(&self) -> Option<f64> {
        let [w, sx, sxx, sy, sxy] = self.s;
        if w < 8.0 {
            return None;
        }
        let (mx, my) = (sx / w, sy / w);
        let var = sxx / w - mx * mx;
        if var < 0.5 {
            return Some(my / (1.0 + self.prior_row_cost * (mx - 1.0).max(0.0)));
        }
        let per_row = ((sxy / w - mx * my) / var).max(0.0);
        Some((my - per_row * mx).max(0.0) + per_row)
    }
}

/// How many guesses to ask a draft model for: the length that maximises expected tokens per
/// unit of cost, when each accepted guess needs all before it accepted (`rate` each) and
/// each guess costs `per_guess` one-row steps (its draft pass and its verification row).
pub fn model_draft_len(rate: f64, per_guess: f64, max_len: usize) -> usize {
    best_draft(rate, per_guess, max_len).0
}

/// The best draft length as `model_draft_len` picks it, and its expected tokens per unit of
/// cost (1.0 for no draft: plain decode), to compare drafters.
pub fn best_draft(rate: f64, per_guess: f64, max_len: usize) -> (usize, f64) {
    let (mut best, mut best_value) = (0, 1.0);
    let (mut tokens, mut p) = (1.0, 1.0);
    for k in 1..=max_len {
        p *= rate;
        tokens += p;
        let value = tokens / (1.0 + per_guess * k as f64);
        if value > best_value {
            (best, best_value) = (k, value);
        }
    }
    (best, best_value)
}

/// Whether running the draft model pays, measured rather than predicted: tokens per second
/// of steps in which it ran against steps decoded plainly (no draft at all), both
/// exponentially weighted. Its passes cost what the target's guess rows do not show (a
/// pass that ends unsure yields no guess), so the per-sequence lengths alone can't tell.
/// Every `EXPLORE`th decision goes the other way, so both figures stay current.
#[derive(Debug, Clone, Default)]
pub struct ModelGate {
    model: Throughput,
    plain: Throughput,
    num_decisions: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Throughput {
    tokens: f64,
    ns: f64,
    num_steps: u32,
}

impl Throughput {
    fn add(&mut self, tokens: usize, ns: u64) {
        self.tokens = 0.9 * self.tokens + tokens as f64;
        self.ns = 0.9 * self.ns + ns as f64;
        self.num_steps = self.num_steps.saturating_add(1);
    }

    fn per_ns(&self) -> Option<f64> {
        (self.num_steps >= 4 && self.ns > 0.0).then(|| self.tokens / self.ns)
    }
}

const EXPLORE: u64 = 32;

impl ModelGate {
    /// Whether this step may run the draft model.
    pub fn use_model(&mut self) -> bool {
        self.num_decisions += 1;
        let pays = match (self.model.per_ns(), self.plain.per_ns()) {
            (Some(m), Some(p)) => m >= p,
            // Until both are known, every other step goes each way.
            _ => return !self.num_decisions.is_multiple_of(2),
        };
        pays != self.num_decisions.is_multiple_of(EXPLORE)
    }

    /// A finished step that ran the draft model (`used_model`) or drafted nothing.
    pub fn observe(&mut self, used_model: bool, tokens: usize, ns: u64) {
        if used_model { &mut self.model } else { &mut self.plain }.add(tokens, ns);
    }
}

/// One sequence's record of verified drafts: the chance that a drafted token is accepted
/// given the ones before it were.
#[derive(Debug, Clone)]
pub struct Acceptance {
    rate: f64,
    /// Where the estimate starts, and what it drifts back to while the drafter is not used.
    prior: f64,
}

/// Prompt lookup's prior: half its guesses right.
const PRIOR_RATE: f64 = 0.5;

impl Default for Acceptance {
    fn default() -> Self {
        Self::with_prior(PRIOR_RATE)
    }
}

impl Acceptance {
    pub fn with_prior(prior: f64) -> Self {
        Self { rate: prior, prior }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// `num_tested` drafted tokens were compared with the target's, `num_accepted` matched.
    pub fn record(&mut self, num_tested: usize, num_accepted: usize) {
        for i in 0..num_tested {
            let hit = if i < num_accepted { 1.0 } else { 0.0 };
            self.rate = 0.85 * self.rate + 0.15 * hit;
        }
    }

    /// A step with a proposal that was not verified: the estimate relaxes toward the prior,
    /// so a sequence that stopped drafting tries again later.
    pub fn skipped(&mut self) {
        self.rate += 0.02 * (self.prior - self.rate);
    }
}

/// Draft rows per candidate. `num_rows` is the step's rows before drafts, `num_sampled` how
/// many sequences sample in it; each candidate is (acceptance rate, tokens proposed). A
/// row's value is the chance its token is accepted (all before it were); it is taken while
/// that value per unit of cost beats the step's tokens per unit of cost so far.
pub fn draft_lengths(num_rows: usize, num_sampled: usize, row_cost: f64, candidates: &[(f64, usize)]) -> Vec<usize> {
    let mut lens = vec![0; candidates.len()];
    let mut tokens = num_sampled as f64;
    // In units of a one-row step.
    let mut cost = 1.0 + row_cost * num_rows.saturating_sub(1) as f64;
    loop {
        let best = candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| lens[*i] < c.1)
            .map(|(i, c)| (i, c.0.powi(lens[i] as i32 + 1)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, gain)) = best else { break };
        if gain * cost <= tokens * row_cost {
            break;
        }
        lens[i] += 1;
        tokens += gain;
        cost += row_cost;
    }
    lens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_model_recovers_a_linear_step_time() {
        let mut m = CostModel::new(0.1);
        assert_eq!(m.row_cost(), 0.1);
        for i in 0..200 {
            let rows = 1 + i % 9;
            m.observe(rows, 10_000_000 + 500_000 * rows as u64);
        }
        // fixed 10 ms, 0.5 ms per row: a row is 0.5 / 10.5 of a one-row step.
        assert!((m.row_cost() - 0.5 / 10.5).abs() < 1e-6, "{}", m.row_cost());
        let mut same = CostModel::new(0.1);
        (0..50).for_each(|_| same.observe(4, 1000));
        assert_eq!(same.row_cost(), 0.1);
    }

    #[test]
    fn cheap_rows_and_good_drafts_verify_long_drafts() {
        // One stream, rows at 3 % of a step, 90 % acceptance: all 8 proposed.
        assert_eq!(draft_lengths(1, 1, 0.03, &[(0.9, 8)]), vec![8]);
        // Poor acceptance: a row is not worth its cost.
        assert_eq!(draft_lengths(1, 1, 0.3, &[(0.2, 8)]), vec![0]);
        // Compute-bound (a row costs as much as a step): nothing is drafted.
        assert_eq!(draft_lengths(16, 16, 1.0, &[(0.9, 8); 16]), vec![0; 16]);
        // A large batch drafts less per sequence than a lone stream.
        let lone = draft_lengths(1, 1, 0.05, &[(0.7, 8)])[0];
        let crowd = draft_lengths(16, 16, 0.05, &[(0.7, 8); 16])[0];
        assert!(crowd < lone, "{crowd} vs {lone}");
        // The better sequence gets the rows first.
        let mixed = draft_lengths(16, 16, 0.05, &[(0.95, 8), (0.3, 8)]);
        assert!(mixed[0] > mixed[1]);
    }

    #[test]
    fn draft_model_guesses_only_as_far_as_they_pay() {
        // Cheap guesses, good record: the whole allowance.
        assert_eq!(model_draft_len(0.95, 0.02, 8), 8);
        // Guesses as dear as a step: never worth one.
        assert_eq!(model_draft_len(0.9, 1.0, 8), 0);
        // A draft model at 40 % of the target's cost pays a short draft at 80 % acceptance,
        // a longer one when it is cheaper, and none at 30 %.
        let dear = model_draft_len(0.8, 0.45, 8);
        assert!((1..=3).contains(&dear), "{dear}");
        assert!(model_draft_len(0.8, 0.1, 8) > dear);
        assert_eq!(model_draft_len(0.3, 0.45, 8), 0);
        assert_eq!(model_draft_len(0.9, 0.1, 0), 0);
    }

    #[test]
    fn the_gate_keeps_the_draft_model_only_while_it_pays() {
        let mut g = ModelGate::default();
        assert!(g.use_model(), "unknown: try the model first");
        assert!(!g.use_model(), "and plain decode next");
        // Model steps: 2 tokens in 100 ms; plain: 1 token in 40 ms. It does not pay.
        for _ in 0..10 {
            g.observe(true, 2, 100_000_000);
            g.observe(false, 1, 40_000_000);
        }
        let on = (0..64).filter(|_| g.use_model()).count();
        assert_eq!(on, 2, "off, but explored every 32nd step");
        // Now it does: 3 tokens in 80 ms.
        for _ in 0..40 {
            g.observe(true, 3, 80_000_000);
        }
        let on = (0..64).filter(|_| g.use_model()).count();
        assert_eq!(on, 62);
    }

    #[test]
    fn the_one_row_step_time_comes_from_the_fit() {
        let mut m = CostModel::new(0.1);
        assert_eq!(m.one_row_step_ns(), None);
        for i in 0..100 {
            m.observe(1 + i % 5, 10_000_000 + 1_000_000 * (1 + i % 5) as u64);
        }
        assert!((m.one_row_step_ns().unwrap() - 11_000_000.0).abs() < 1.0);
    }

    #[test]
    fn acceptance_follows_results_and_recovers_while_idle() {
        let mut a = Acceptance::default();
        a.record(4, 4);
        assert!(a.rate() > 0.7);
        a.record(10, 0);
        assert!(a.rate() < 0.15);
        let low = a.rate();
        (0..50).for_each(|_| a.skipped());
        assert!(a.rate() > low && a.rate() < PRIOR_RATE);
    }
}
