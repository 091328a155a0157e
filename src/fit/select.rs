//! Model selection: `neuroloop fit --latent 2,4,8,16` (likewise `--embed`, `--hidden`) fits
//! every combination, scores each on the held-out bins by co-smoothing bits/spike
//! (crate::eval), and keeps the smallest model whose score is within one standard error of
//! the best (the one-standard-error rule: a lab should not pay latency for dimensions the
//! data do not support). The standard error is a jackknife over the units.
//!
//! The candidates run in parallel, as many at once as there are cores.

use super::data::FitData;
use super::{eval, fit, FitOptions, Fitted};
use crate::eval::{Dataset, Split};
use anyhow::bail;
use serde::Serialize;

/// At most this many candidate models in one selection.
pub const MAX_CANDIDATES: usize = 32;

/// The values each dimension may take (one value each: no selection).
#[derive(Debug, Clone, PartialEq)]
pub struct Choices {
    pub latent: Vec<usize>,
    pub embed: Vec<usize>,
    pub hidden: Vec<usize>,
    /// α: None = fitted, Some(a) = fixed at a (`--alpha fit,0.02`).
    pub alpha: Vec<Option<f64>>,
}

/// One candidate: (d, e, h, α).
pub type Dims4 = (usize, usize, usize, Option<f64>);

impl Choices {
    pub fn single(opts: &FitOptions) -> Choices {
        Choices { latent: vec![opts.latent], embed: vec![opts.embed], hidden: vec![opts.hidden], alpha: vec![opts.alpha] }
    }

    /// (d, e, h, α) of every candidate, smallest first (d, then e, then h; a fitted α first).
    pub fn candidates(&self) -> Vec<Dims4> {
        let mut out = Vec::new();
        for &d in &self.latent {
            for &e in &self.embed {
                for &h in &self.hidden {
                    for &a in &self.alpha {
                        out.push((d, e, h, a));
                    }
                }
            }
        }
        out.sort_by(|x, y| (x.0, x.1, x.2).cmp(&(y.0, y.1, y.2)).then(x.3.unwrap_or(-1.0).total_cmp(&y.3.unwrap_or(-1.0))));
        out.dedup();
        out
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let n = self.candidates().len();
        if n > MAX_CANDIDATES {
            bail!(
                "--latent × --embed × --hidden × --alpha make {n} candidate models; at most {MAX_CANDIDATES} are fitted in one selection (give fewer values)"
            );
        }
        Ok(())
    }
}

/// One candidate's held-out scores.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub latent: usize,
    pub embed: usize,
    pub hidden: usize,
    /// α fixed for this candidate (null: fitted); `alpha` is the value it ended with.
    pub alpha_fixed: Option<f64>,
    pub alpha: Option<f64>,
    pub co_bits_per_spike: Option<f64>,
    /// Jackknife standard error of `co_bits_per_spike` over the held-out units.
    pub co_bits_per_spike_se: Option<f64>,
    pub predictive_bits_per_spike: Option<f64>,
    pub fit_s: f64,
    /// Why the candidate could not be used (its fit failed or stopped early).
    pub failed: Option<String>,
}

/// The selection's table and choice.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    pub candidates: Vec<Candidate>,
    /// Index into `candidates`.
    pub chosen: usize,
    /// The rule that picked it, in words.
    pub rule: String,
}

/// Co-bps and its jackknife standard error over the units.
fn co_bps_with_se(ds: &Dataset, split: &Split, rates: &[f64]) -> (Option<f64>, Option<f64>) {
    let nu = ds.n_units;
    if split.folds.is_empty() {
        return (None, None);
    }
    // Per-unit NLL sums (null, model) and spikes.
    let per_unit: Vec<(f64, f64, f64)> = (0..nu)
        .map(|j| {
            let col: Vec<f64> = (0..split.eval_rows.len()).map(|i| rates[i * nu + j]).collect();
            crate::eval::nll_sums(ds, &split.eval_rows, &[j], &col)
        })
        .collect();
    let bps = |skip: Option<usize>| {
        let (mut gain, mut spikes) = (0.0, 0.0);
        for (j, (null, model, s)) in per_unit.iter().enumerate() {
            if Some(j) != skip {
                gain += null - model;
                spikes += s;
            }
        }
        (spikes > 0.0).then(|| gain / spikes / std::f64::consts::LN_2)
    };
    let Some(all) = bps(None).filter(|v| v.is_finite()) else { return (None, None) };
    if nu < 2 {
        return (Some(all), None);
    }
    let loo: Vec<f64> = (0..nu).filter_map(|j| bps(Some(j))).collect();
    let mean = loo.iter().sum::<f64>() / loo.len() as f64;
    let var = loo.iter().map(|v| (v - mean).powi(2)).sum::<f64>() * (loo.len() as f64 - 1.0) / loo.len() as f64;
    (Some(all), Some(var.sqrt()).filter(|v| v.is_finite()))
}

/// One candidate's result, filled by whichever worker fitted it.
type Slot = std::sync::Mutex<Option<(Candidate, Option<Fitted>)>>;

/// Fit every candidate of `choices` (in parallel), score each, pick one. Returns the chosen
/// fit and the table (None when there was only one candidate: no selection).
pub fn fit_and_select(
    data: &FitData,
    opts: &FitOptions,
    choices: &Choices,
    on_iteration: &(dyn Fn(&super::IterationRecord) + Sync),
) -> anyhow::Result<(Fitted, Option<Selection>)> {
    choices.validate()?;
    let cands = choices.candidates();
    if cands.len() == 1 {
        let (d, e, h, alpha) = cands[0];
        let o = FitOptions { latent: d, embed: e, hidden: h, alpha, ..opts.clone() };
        return Ok((fit(data, &o, on_iteration)?, None));
    }
    let ds = eval::dataset(data);
    let split = Split::new(&ds, opts.seed);
    if split.folds.is_empty() || split.eval_rows.is_empty() {
        bail!(
            "model selection scores each candidate on held-out co-smoothing, which needs at least 2 units and held-out bins (--heldout > 0); give one value each for --latent, --embed, --hidden"
        );
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(cands.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Slot> = cands.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(d, e, h, alpha)) = cands.get(i) else { break };
                let started = std::time::Instant::now();
                let o = FitOptions { latent: d, embed: e, hidden: h, alpha, progress: false, ..opts.clone() };
                let mut cand = Candidate {
                    latent: d,
                    embed: e,
                    hidden: h,
                    alpha_fixed: alpha,
                    alpha: None,
                    co_bits_per_spike: None,
                    co_bits_per_spike_se: None,
                    predictive_bits_per_spike: None,
                    fit_s: 0.0,
                    failed: None,
                };
                let fitted = match fit(data, &o, on_iteration) {
                    Ok(f) => {
                        let (ev, rates) = eval::evaluate(data, &f.params, &|fi, k| data.files[fi].task[k], &split);
                        let (co, se) = co_bps_with_se(&ds, &split, &rates.cosmoothed);
                        cand.co_bits_per_spike = co;
                        cand.co_bits_per_spike_se = se;
                        cand.predictive_bits_per_spike = ev.predictive_bits_per_spike;
                        cand.alpha = Some(f.params.alpha);
                        cand.failed = f.diverged.clone();
                        Some(f)
                    }
                    Err(err) => {
                        cand.failed = Some(format!("{err:#}"));
                        None
                    }
                };
                cand.fit_s = started.elapsed().as_secs_f64();
                eprintln!(
                    "[neuroloop] fit: candidate d={d} e={e} h={h} α={}: co-smoothing {} bits/spike ({:.1} s)",
                    alpha.map_or("fitted".into(), |a| a.to_string()),
                    cand.co_bits_per_spike.map_or("-".into(), |v| format!("{v:.3}")),
                    cand.fit_s
                );
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some((cand, fitted));
            });
        }
    });
    let mut table = Vec::new();
    let mut fits = Vec::new();
    for r in results {
        let (c, f) = r.into_inner().unwrap_or_else(|p| p.into_inner()).expect("every candidate ran");
        table.push(c);
        fits.push(f);
    }
    let usable = |c: &Candidate| c.failed.is_none() && c.co_bits_per_spike.is_some();
    let Some(best) = (0..table.len())
        .filter(|&i| usable(&table[i]))
        .max_by(|&a, &b| table[a].co_bits_per_spike.unwrap_or(f64::MIN).total_cmp(&table[b].co_bits_per_spike.unwrap_or(f64::MIN)))
    else {
        let why: Vec<String> = table
            .iter()
            .map(|c| format!("d={} e={} h={}: {}", c.latent, c.embed, c.hidden, c.failed.as_deref().unwrap_or("no score")))
            .collect();
        bail!("no candidate model could be fitted and scored: {}", why.join("; "));
    };
    let best_score = table[best].co_bits_per_spike.unwrap_or(f64::MIN);
    let se = table[best].co_bits_per_spike_se.unwrap_or(0.0);
    // Candidates are in size order: the first usable one within one SE of the best.
    let chosen =
        (0..table.len()).find(|&i| usable(&table[i]) && table[i].co_bits_per_spike.unwrap_or(f64::MIN) >= best_score - se).unwrap_or(best);
    let rule = if chosen == best {
        format!("the best held-out co-smoothing ({best_score:.3} bits/spike)")
    } else {
        format!(
            "the smallest model within one standard error ({se:.3}) of the best held-out co-smoothing ({best_score:.3} bits/spike, d={} e={} h={} α {})",
            table[best].latent,
            table[best].embed,
            table[best].hidden,
            table[best].alpha_fixed.map_or("fitted".into(), |a| a.to_string())
        )
    };
    let fitted = fits.swap_remove(chosen).expect("a usable candidate has its fit");
    Ok((fitted, Some(Selection { candidates: table, chosen, rule })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_every_combination_smallest_first() {
        let c = Choices { latent: vec![8, 2], embed: vec![3], hidden: vec![16, 8], alpha: vec![None] };
        assert_eq!(c.candidates(), vec![(2, 3, 8, None), (2, 3, 16, None), (8, 3, 8, None), (8, 3, 16, None)]);
        let a = Choices { latent: vec![2], embed: vec![3], hidden: vec![16], alpha: vec![Some(0.1), None, Some(0.02)] };
        assert_eq!(a.candidates(), vec![(2, 3, 16, None), (2, 3, 16, Some(0.02)), (2, 3, 16, Some(0.1))]);
        let many = Choices { latent: (1..=8).collect(), embed: (1..=3).collect(), hidden: vec![4, 8], alpha: vec![None] };
        assert!(many.validate().unwrap_err().to_string().contains("48 candidate models"));
    }
}
