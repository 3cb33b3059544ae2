//! Preference losses over summed completion log-probs, as in TRL's `DPOTrainer`:
//! DPO (sigmoid), conservative DPO (label smoothing) and IPO.
//!
//! All take policy and reference log-probs of the chosen and rejected completions, (pairs,)
//! tensors, and return the mean loss plus the implicit rewards `beta * (logp - logp_ref)` that
//! the certainty acquisition also uses.

use candle_core::{Result, Tensor};

pub use apl_shared::settings::Loss;

/// Policy and reference log-probs of a batch of pairs, each (pairs,).
pub struct PairLogprobs<'a> {
    pub policy_chosen: &'a Tensor,
    pub policy_rejected: &'a Tensor,
    pub ref_chosen: &'a Tensor,
    pub ref_rejected: &'a Tensor,
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
    let chosen_ratio = (lp.policy_chosen - lp.ref_chosen)?;
    let rejected_ratio = (lp.policy_rejected - lp.ref_rejected)?;
    let logits = (&chosen_ratio - &rejected_ratio)?;
    let per_pair = match loss {
        Loss::Dpo => log_sigmoid(&(&logits * beta)?)?.neg()?,
        Loss::Cdpo { label_smoothing: e } => {
            let h = (&logits * beta)?;
            let a = (log_sigmoid(&h)? * (1.0 - e))?;
            let b = (log_sigmoid(&h.neg()?)? * e)?;
            (a + b)?.neg()?
        }
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
        // One pair: pc = -10, rc = -11, pr = -12, rr = -11.5; beta = 0.2.
        let (pc, pr, rc, rr) = (t(&[-10.0]), t(&[-12.0]), t(&[-11.0]), t(&[-11.5]));
        let lp = PairLogprobs { policy_chosen: &pc, policy_rejected: &pr, ref_chosen: &rc, ref_rejected: &rr };
        compute(kind, &lp, 0.2).unwrap().loss.to_scalar::<f64>().unwrap()
    }

    #[test]
    fn losses_match_hand_computed_values() {
        // logits = (pc - rc) - (pr - rr) = 1 - (-0.5) = 1.5; h = 0.2 * 1.5 = 0.3.
        // DPO: -log sigmoid(0.3) = ln(1 + e^-0.3) = ln(1.7408182) = 0.5543552
        assert!((loss(Loss::Dpo) - 0.5543552).abs() < 1e-6);
        // cDPO, e = 0.1: 0.9 * 0.5543552 + 0.1 * ln(1 + e^0.3) = 0.4989197 + 0.1 * 0.8543552 = 0.5843552
        assert!((loss(Loss::Cdpo { label_smoothing: 0.1 }) - 0.5843552).abs() < 1e-6);
        // IPO: (1.5 - 1 / (2 * 0.2))^2 = (1.5 - 2.5)^2 = 1.0
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
        let lp = PairLogprobs { policy_chosen: &pc, policy_rejected: &pr, ref_chosen: &rc, ref_rejected: &rr };
        let out = compute(Loss::Dpo, &lp, 0.2).unwrap();
        assert!((out.reward_chosen.to_vec1::<f64>().unwrap()[0] - 0.2).abs() < 1e-12);
        assert!((out.reward_rejected.to_vec1::<f64>().unwrap()[0] + 0.1).abs() < 1e-12);
    }
}
