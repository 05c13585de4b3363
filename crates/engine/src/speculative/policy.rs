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

/// One sequence's record of verified drafts: the chance that a drafted token is accepted
/// given the ones before it were.
#[derive(Debug, Clone)]
pub struct Acceptance {
    rate: f64,
}

/// Where a sequence's estimate starts, and what it drifts back to while it does not draft.
const PRIOR_RATE: f64 = 0.5;

impl Default for Acceptance {
    fn default() -> Self {
        Self { rate: PRIOR_RATE }
    }
}

impl Acceptance {
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
        self.rate += 0.02 * (PRIOR_RATE - self.rate);
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
