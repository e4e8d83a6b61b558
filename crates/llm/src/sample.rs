//! Canonical sampling (spec: `docs/spec/llm.md` §4): the next token from a step's integer logits,
//! the request's parameters as fixed-point integers and a counter-based generator seeded by the request,
//! so a seeded sample is re-executable anywhere, bit for bit. Integers only: no float touches a choice.

use verity_core::keccak256;

use crate::arch::LlmError;

/// Fractional bits of the fixed-point parameters (temperature, top-p, repetition penalty).
pub const PARAM_BITS: u32 = 16;
/// Index bits of the exp table: score differences are resolved to 2^-10.
const EXP_BITS: i32 = 10;
/// Differences below −40 (in logits) weigh 0.
const EXP_RANGE: i32 = 40;

/// Sampling parameters, as a request gives them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// 0 means greedy.
    pub temperature: f64,
    /// Keep the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    /// Divide positive logits (multiply negative ones) of tokens already in the context by this.
    pub repetition_penalty: f64,
    /// The generator's seed.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// The parameters in the fixed-point form the choice uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// `round(temperature · 2^16)`; 0 is greedy.
    pub temperature_q: u32,
    /// 0 = all.
    pub top_k: u32,
    /// `round(top_p · 2^16)`, in `1 … 2^16`.
    pub top_p_q: u32,
    /// `round(penalty · 2^16)`, at least `2^16`… or any positive value.
    pub repetition_q: u32,
    /// Seed.
    pub seed: u64,
}

fn fixed(x: f64) -> u32 {
    (x * f64::from(1u32 << PARAM_BITS) + 0.5).floor() as u32
}

impl Sampler {
    /// Checks and converts request parameters.
    pub fn new(p: &Params) -> Result<Sampler, LlmError> {
        let bad = |what: String| Err(LlmError::Request(what));
        if !(0.0..=100.0).contains(&p.temperature) {
            return bad(format!("temperature {} is outside 0 … 100", p.temperature));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return bad(format!("top_p {} is outside (0, 1]", p.top_p));
        }
        if !(p.repetition_penalty > 0.0 && p.repetition_penalty <= 100.0) {
            return bad(format!(
                "repetition penalty {} is outside (0, 100]",
                p.repetition_penalty
            ));
        }
        Ok(Sampler {
            temperature_q: fixed(p.temperature),
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p_q: fixed(p.top_p).clamp(1, 1 << PARAM_BITS),
            repetition_q: fixed(p.repetition_penalty).max(1),
            seed: p.seed,
        })
    }

    /// Whether this sampler always takes the largest logit.
    pub fn is_greedy(&self) -> bool {
        self.temperature_q == 0 || self.top_k == 1
    }

    /// The token chosen from `logits` (integers at fractional bits `scale`) for the output at
    /// `position` of the generation, `history` the tokens of the context so far (for the penalty).
    pub fn choose(&self, logits: &[i32], scale: i8, history: &[u32], position: u64) -> u32 {
        let mut z: Vec<i64> = logits.iter().map(|&v| v.into()).collect();
        let one = 1i64 << PARAM_BITS;
        if self.repetition_q as i64 != one {
            let r = self.repetition_q as i64;
            let mut seen: Vec<u32> = history
                .iter()
                .copied()
                .filter(|&t| (t as usize) < z.len())
                .collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                let v = &mut z[t as usize];
                *v = if *v > 0 {
                    div_round(*v * one, r)
                } else {
                    div_round(*v * r, one)
                };
            }
        }
        if self.is_greedy() {
            return crate::session::argmax(&z);
        }
        // scaled logits y = z / temperature, at the logits' scale
        let t = self.temperature_q as i64;
        let y: Vec<i64> = z.iter().map(|&v| div_round(v * one, t)).collect();
        // candidates by (y descending, id ascending)
        let mut ids: Vec<u32> = (0..y.len() as u32).collect();
        ids.sort_unstable_by(|&a, &b| y[b as usize].cmp(&y[a as usize]).then(a.cmp(&b)));
        if self.top_k > 0 {
            ids.truncate(self.top_k as usize);
        }
        // weights: exp of the difference to the best, from the table (entries at scale 30)
        let ymax = y[ids[0] as usize];
        let shift = scale as i32 - EXP_BITS;
        let table = exp_table();
        let weights: Vec<u64> = ids
            .iter()
            .map(|&i| {
                let d = ymax - y[i as usize];
                let k = if shift >= 0 {
                    rshift64(d, shift as u32)
                } else {
                    d.saturating_mul(1 << (-shift).min(62))
                };
                table
                    .get(k.clamp(0, i64::MAX) as usize)
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        // top-p: the shortest prefix whose weight reaches top_p of the total
        let total: u128 = weights.iter().map(|&w| w as u128).sum();
        let mut keep = weights.len();
        if self.top_p_q < 1 << PARAM_BITS {
            let need = total * self.top_p_q as u128;
            let mut cum = 0u128;
            for (n, &w) in weights.iter().enumerate() {
                cum += w as u128;
                if cum << PARAM_BITS >= need {
                    keep = n + 1;
                    break;
                }
            }
        }
        let kept: u128 = weights[..keep].iter().map(|&w| w as u128).sum();
        // the draw: u uniform in [0, 2^64) from keccak(seed ‖ position), r = ⌊u · kept / 2^64⌋
        let mut msg = [0u8; 16];
        msg[..8].copy_from_slice(&self.seed.to_be_bytes());
        msg[8..].copy_from_slice(&position.to_be_bytes());
        let h = keccak256(&msg);
        let mut u = [0u8; 8];
        u.copy_from_slice(&h.as_bytes()[..8]);
        let r = (u64::from_be_bytes(u) as u128 * kept) >> 64;
        let mut cum = 0u128;
        for (n, &w) in weights[..keep].iter().enumerate() {
            cum += w as u128;
            if r < cum {
                return ids[n];
            }
        }
        ids[0]
    }
}

/// `round(a / b)` half up, `b > 0`.
fn div_round(a: i64, b: i64) -> i64 {
    (2 * a as i128 + b as i128).div_euclid(2 * b as i128) as i64
}

fn rshift64(x: i64, k: u32) -> i64 {
    if k == 0 {
        x
    } else {
        ((x as i128 + (1i128 << (k - 1))) >> k) as i64
    }
}

/// `E[k] = round(2^30 · exp(−k · 2^−10))` for `k` up to 40 · 2^10 (computed once, with `libm`).
fn exp_table() -> &'static [u64] {
    static TABLE: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=(EXP_RANGE << EXP_BITS))
            .map(|k| {
                (libm::exp(-(k as f64) / f64::from(1u32 << EXP_BITS)) * (30f64).exp2() + 0.5)
                    .floor() as u64
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: usize, top_p: f64, seed: u64) -> Sampler {
        Sampler::new(&Params {
            temperature,
            top_k,
            top_p,
            repetition_penalty: 1.0,
            seed,
        })
        .unwrap()
    }

    /// logits (scale 16) with probabilities ∝ exp(−i / 2) over 8 tokens
    fn logits() -> Vec<i32> {
        (0..8).map(|i| -(i << 15)).collect()
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let s = sampler(1.0, 0, 1.0, 42);
        let mut counts = [0u32; 8];
        let n = 20_000;
        for p in 0..n {
            counts[s.choose(&logits(), 16, &[], p) as usize] += 1;
        }
        let z: f64 = (0..8).map(|i| (-(i as f64) / 2.0).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let want = (-(i as f64) / 2.0).exp() / z;
            let got = c as f64 / n as f64;
            // 4 standard deviations of a binomial frequency
            let sd = (want * (1.0 - want) / n as f64).sqrt();
            assert!(
                (got - want).abs() < 4.0 * sd + 1e-3,
                "token {i}: {got} vs {want}"
            );
        }
        // a temperature of 2 flattens: probabilities ∝ exp(−i / 4)
        let s = sampler(2.0, 0, 1.0, 42);
        let last = (0..n)
            .filter(|&p| s.choose(&logits(), 16, &[], p) == 7)
            .count() as f64
            / n as f64;
        let want = (-7.0f64 / 4.0).exp() / (0..8).map(|i| (-(i as f64) / 4.0).exp()).sum::<f64>();
        assert!((last - want).abs() < 0.01, "{last} vs {want}");
    }

    #[test]
    fn the_same_seed_and_position_give_the_same_token() {
        let a = sampler(0.8, 0, 1.0, 7);
        let draws: Vec<u32> = (0..200).map(|p| a.choose(&logits(), 16, &[], p)).collect();
        assert_eq!(
            draws,
            (0..200)
                .map(|p| a.choose(&logits(), 16, &[], p))
                .collect::<Vec<_>>()
        );
        let b = sampler(0.8, 0, 1.0, 8);
        assert_ne!(
            draws,
            (0..200)
                .map(|p| b.choose(&logits(), 16, &[], p))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn top_k_top_p_greedy_and_penalty_restrict_the_choice() {
        for p in 0..500 {
            assert!(sampler(1.0, 3, 1.0, 1).choose(&logits(), 16, &[], p) < 3);
            // top_p 0.5: token 0 alone has 0.39, tokens 0 and 1 have 0.63
            assert!(sampler(1.0, 0, 0.5, 1).choose(&logits(), 16, &[], p) < 2);
            assert_eq!(sampler(0.0, 0, 1.0, p).choose(&logits(), 16, &[], p), 0);
            assert_eq!(sampler(1.0, 1, 1.0, p).choose(&logits(), 16, &[], p), 0);
        }
        // a penalty of 4: token 3 leads with 1.0; penalized it falls to 0.25, below token 0's 0.3;
        // a negative logit is multiplied (token 1: −0.5 → −2, below token 2's −1)
        let s = Sampler::new(&Params {
            repetition_penalty: 4.0,
            ..Params::default()
        })
        .unwrap();
        let mut l = logits();
        l[0] = 19661;
        l[3] = 1 << 16;
        assert_eq!(s.choose(&l, 16, &[], 0), 3);
        assert_eq!(s.choose(&l, 16, &[3, 3], 0), 0);
        let l: Vec<i32> = vec![-(1 << 20), -(1 << 15), -(1 << 16)];
        assert_eq!(s.choose(&l, 16, &[], 0), 1);
        assert_eq!(s.choose(&l, 16, &[1], 0), 2);
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        for p in [
            Params {
                temperature: -1.0,
                ..Params::default()
            },
            Params {
                top_p: 0.0,
                ..Params::default()
            },
            Params {
                top_p: 1.5,
                ..Params::default()
            },
            Params {
                repetition_penalty: 0.0,
                ..Params::default()
            },
            Params {
                temperature: f64::NAN,
                ..Params::default()
            },
        ] {
            assert!(Sampler::new(&p).is_err(), "{p:?}");
        }
    }
}
