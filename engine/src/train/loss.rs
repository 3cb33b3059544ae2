//! Preference losses over completion log-probs, as in TRL's `DPOTrainer`: DPO (sigmoid),
//! conservative DPO (label smoothing) and IPO.
//!
//! All take policy and reference log-probs of the chosen and rejected completions, (pairs,)
//! tensors summed over completion tokens, and return the mean loss plus the implicit rewards
//! `beta * (logp - logp_ref)` that the certainty acquisition also uses. IPO, as TRL defines it
//! (`loss_type="ipo"`), averages instead of summing: every log-prob is divided by its
//! completion's token count before the log-ratios are taken, and its rewards are those of the
//! averaged log-probs too.

use candle_core::{Result, Tensor};

pub use apl_shared::settings::Loss;

/// Policy and reference log-probs of a batch of pairs, each (pairs,).
pub struct PairLogprobs<'a> {
    pub policy_chosen: &'a Tensor,
    pub policy_rejected: &'a Tensor,
    pub ref_chosen: &'a Tensor,
    pub ref_rejected: &'a Tensor,
    /// Completion token counts of the chosen and rejected completions, (pairs,), in the
    /// log-probs' dtype (IPO's averages).
    pub chosen_tokens: &'a Tensor,
    pub rejected_tokens: &'a Tensor,
}

pub struct LossOutput {
    /// Mean over the batch (scalar).
    pub loss: Tensor,
    /// beta * (logp - logp_ref) of chosen and rejected completions, (pairs,), detached.
    pub reward_chosen: Tensor,
    pub reward_rejected: Tensor,
}

/// log sigmoid(x), computed stably: min(x, 0) - log(1 + exp(-|x|)).
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let min0 = x.neg()?.relu()?.neg()?;
    let softplus_tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    min0 - softplus_tail
}

/// The loss of a batch of pairs under `loss`.
pub fn compute(loss: Loss, lp: &PairLogprobs, beta: f64) -> Result<LossOutput> {
    let mut chosen_ratio = (lp.policy_chosen - lp.ref_chosen)?;
    let mut rejected_ratio = (lp.policy_rejected - lp.ref_rejected)?;
    if loss == Loss::Ipo {
        // (a / n - b / n) = (a - b) / n: the averaged log-probs' ratio (n at least 1: an empty
        // completion has ratio 0, not 0/0).
        chosen_ratio = chosen_ratio.div(&lp.chosen_tokens.maximum(1.0)?)?;
        rejected_ratio = rejected_ratio.div(&lp.rejected_tokens.maximum(1.0)?)?;
    }
    let logits = (&chosen_ratio - &rejected_ratio)?;
    let per_pair = match loss {
        Loss::Dpo => log_sigmoid(&(&logits * beta)?)?.neg()?,
        Loss::Cdpo { label_smoothing: e } => {
            let h = (&logits * beta)?;
            let a = (log_sigmoid(&h)? * (1.0 - e))?;
            let b = (log_sigmoid(&h.neg()?)? * e)?;
            (a + b)?.neg()?
        }
        // TRL: (logits - 1 / (2 beta))^2, logits of the length-averaged log-probs.
        Loss::Ipo => (logits - 1.0 / (2.0 * beta))?.sqr()?,
    };
    Ok(LossOutput {
        loss: per_pair.mean_all()?,
        reward_chosen: (chosen_ratio * beta)?.detach(),
        reward_rejected: (rejected_ratio * beta)?.detach(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn loss(kind: Loss) -> f64 {
        // One pair: pc = -10, rc = -11, pr = -12, rr = -11.5; beta = 0.2; one token each.
        let (pc, pr, rc, rr) = (t(&[-10.0]), t(&[-12.0]), t(&[-11.0]), t(&[-11.5]));
        let one = t(&[1.0]);
        let lp = PairLogprobs {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_tokens: &one,
            rejected_tokens: &one,
        };
        compute(kind, &lp, 0.2).unwrap().loss.to_scalar::<f64>().unwrap()
    }

    /// IPO averages over completion tokens (TRL's `loss_type="ipo"`): a 4-token chosen and a
    /// 2-token rejected completion.
    #[test]
    fn ipo_uses_length_averaged_log_probs() {
        let (pc, pr, rc, rr) = (t(&[-10.0]), t(&[-12.0]), t(&[-11.0]), t(&[-11.5]));
        let (nc, nr) = (t(&[4.0]), t(&[2.0]));
        let lp = PairLogprobs {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_tokens: &nc,
            rejected_tokens: &nr,
        };
        let out = compute(Loss::Ipo, &lp, 0.2).unwrap();
        // chosen: (-10 - -11) / 4 = 0.25; rejected: (-12 - -11.5) / 2 = -0.25; logits 0.5;
        // loss (0.5 - 2.5)^2 = 4.0. TRL's formula on its averaged log-probs: pi_logratios =
        // -10/4 - -12/2 = 3.5, ref_logratios = -11/4 - -11.5/2 = 3.0, logits 0.5: the same.
        assert!((out.loss.to_scalar::<f64>().unwrap() - 4.0).abs() < 1e-12);
        assert!((out.reward_chosen.to_vec1::<f64>().unwrap()[0] - 0.05).abs() < 1e-12);
        assert!((out.reward_rejected.to_vec1::<f64>().unwrap()[0] + 0.05).abs() < 1e-12);
        // DPO ignores the lengths: the summed form.
        let dpo = compute(Loss::Dpo, &lp, 0.2).unwrap().loss.to_scalar::<f64>().unwrap();
        assert!((dpo - 0.5543552).abs() < 1e-6);
    }

    #[test]
    fn losses_match_hand_computed_values() {
        // logits = (pc - rc) - (pr - rr) = 1 - (-0.5) = 1.5; h = 0.2 * 1.5 = 0.3.
        // DPO: -log sigmoid(0.3) = ln(1 + e^-0.3) = ln(1.7408182) = 0.5543552
        assert!((loss(Loss::Dpo) - 0.5543552).abs() < 1e-6);
        // cDPO, e = 0.1: 0.9 * 0.5543552 + 0.1 * ln(1 + e^0.3) = 0.4989197 + 0.1 * 0.8543552 = 0.5843552
        assert!((loss(Loss::Cdpo { label_smoothing: 0.1 }) - 0.5843552).abs() < 1e-6);
        // IPO (one-token completions, so averages are sums): (1.5 - 1 / (2 * 0.2))^2 = 1.0
        assert!((loss(Loss::Ipo) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn log_sigmoid_is_stable_at_extremes() {
        let v = log_sigmoid(&t(&[-800.0, 0.0, 800.0])).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(v[0], -800.0);
        assert!((v[1] + std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(v[2], 0.0);
    }

    #[test]
    fn rewards_are_beta_scaled_log_ratios() {
        let (pc, pr, rc, rr) = (t(&[-10.0]), t(&[-12.0]), t(&[-11.0]), t(&[-11.5]));
        let n = t(&[3.0]);
        let lp = PairLogprobs {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_tokens: &n,
            rejected_tokens: &n,
        };
        let out = compute(Loss::Dpo, &lp, 0.2).unwrap();
        assert!((out.reward_chosen.to_vec1::<f64>().unwrap()[0] - 0.2).abs() < 1e-12);
        assert!((out.reward_rejected.to_vec1::<f64>().unwrap()[0] + 0.1).abs() < 1e-12);
    }
}
