//! Our alignment losses against TRL's own code on fixed tensors: `tests/fixtures/align/trl_losses.json`,
//! written by `tools/reference/trl_fixtures.py` (trl 1.16.0 for DPO, the reward loss and GRPO; trl
//! 0.29.1's `PPOTrainer.train()` for PPO, cut verbatim from the file). Every number matches to 1e-6
//! (relative above 1); where our convention differs from TRL's on purpose, the test states the exact
//! relation between the two (docs/alignment.md, "Against TRL").

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use qwen_align::*;
use serde_json::Value;

type T = Flex;

fn fixtures() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/align/trl_losses.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the TRL fixture file")).unwrap()
}

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn vec(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn mat(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(vec).collect()
}

fn t1(v: &[f32]) -> Tensor<T, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

fn scalar(t: Tensor<T, 1>) -> f32 {
    t.into_data().to_vec::<f32>().unwrap()[0]
}

#[track_caller]
fn close(got: f32, want: f32, what: &str) {
    assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{what}: ours {got}, TRL {want}");
}

#[test]
fn dpo_sigmoid_loss_matches_trl() {
    let fx = fixtures();
    let d = &fx["dpo"];
    let i = &d["inputs"];
    let cases = d["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let beta = case["beta"].as_f64().unwrap();
        let got = scalar(dpo_loss(
            t1(&vec(&i["policy_chosen"])),
            t1(&vec(&i["policy_rejected"])),
            t1(&vec(&i["reference_chosen"])),
            t1(&vec(&i["reference_rejected"])),
            beta,
        ));
        close(got, f(&case["loss"]), &format!("DPO loss, beta {beta}"));
    }
}

#[test]
fn pairwise_reward_loss_matches_trl() {
    let fx = fixtures();
    let r = &fx["reward"];
    let got = scalar(pairwise_loss(t1(&vec(&r["chosen"])), t1(&vec(&r["rejected"]))));
    close(got, f(&r["loss"]), "pairwise reward loss");
}

#[test]
fn whitening_matches_trl_masked_whiten() {
    let fx = fixtures();
    let w = &fx["whiten"];
    let (x, mask, want) = (mat(&w["x"]), mat(&w["mask"]), mat(&w["whitened"]));
    // TRL whitens the masked entries of the whole tensor together.
    let at: Vec<(usize, usize)> =
        (0..x.len()).flat_map(|r| (0..x[r].len()).map(move |c| (r, c))).filter(|&(r, c)| mask[r][c] > 0.5).collect();
    let mut ours: Vec<f32> = at.iter().map(|&(r, c)| x[r][c]).collect();
    whiten(&mut ours);
    for (k, &(r, c)) in at.iter().enumerate() {
        close(ours[k], want[r][c], &format!("whitened [{r}][{c}]"));
    }
    // Near-constant input (1 ± 2^-16): the epsilon inside the square root caps the scale (1e4),
    // ±0.15 here; outside it the differences would be blown up to ±1.22.
    let mut near = mat(&w["near_constant"])[0].clone();
    whiten(&mut near);
    for (k, want) in mat(&w["near_constant_whitened"])[0].iter().enumerate() {
        close(near[k], *want, &format!("near-constant whitened [{k}]"));
    }
    assert!(near.iter().all(|v| v.abs() < 0.2), "{near:?}");
}

/// PPO's rollout (KL estimators, score placement, GAE, whitening) and one minibatch's losses and
/// statistics, against trl 0.29.1's `PPOTrainer.train()`.
#[test]
fn ppo_rollout_and_losses_match_trl() {
    let fx = fixtures();
    let p = &fx["ppo"];
    let logprobs = mat(&p["logprobs"]);
    let ref_logprobs = mat(&p["ref_logprobs"]);
    let values0 = mat(&p["values"]);
    let scores = vec(&p["scores"]);
    let lens: Vec<usize> = vec(&p["sequence_lengths"]).iter().map(|&l| l as usize).collect();
    let (rows, width) = (logprobs.len(), logprobs[0].len());
    let cases = p["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    let mut placements_seen = (false, false);
    for case in cases {
        let estimator = match case["kl_estimator"].as_str().unwrap() {
            "k1" => KlEstimator::K1,
            "k3" => KlEstimator::K3,
            other => panic!("{other}"),
        };
        let name = format!("{estimator:?}");
        let (kl_coef, gamma, lambda) = (f(&case["kl_coef"]), f(&case["gamma"]), f(&case["lambda"]));
        let (trl_kl, trl_rewards, trl_returns) = (mat(&case["kl"]), mat(&case["rewards"]), mat(&case["returns"]));
        let trl_adv = mat(&case["advantages"]);
        let (new_logprobs, vpred) = (mat(&case["new_logprobs"]), mat(&case["vpred"]));
        // Per response token (row-major), and per value position (the response, plus TRL's slot
        // after it where the row has one).
        let (mut raw_adv, mut old, mut new, mut at_tokens) = (vec![], vec![], vec![], vec![]);
        let (mut v_old, mut v_new, mut v_ret) = (vec![], vec![], vec![]);
        let (mut kl_sum, mut neg_logp_sum) = (0f32, 0f32);
        for i in 0..rows {
            let n = lens[i] + 1; // tokens 0..=L, the stop token included
                                 // TRL puts the score one slot after the response where its padded width has room, else on
                                 // the last token: both our placements, each checked against TRL here.
            let placement = if n < width { ScorePlacement::AfterResponse } else { ScorePlacement::LastToken };
            match placement {
                ScorePlacement::AfterResponse => placements_seen.0 = true,
                ScorePlacement::LastToken => placements_seen.1 = true,
            }
            let (lp, rp) = (&logprobs[i][..n], &ref_logprobs[i][..n]);
            for t in 0..n {
                close(estimator.per_token(lp[t], rp[t]), trl_kl[i][t], &format!("{name} kl [{i}][{t}]"));
                kl_sum += estimator.per_token(lp[t], rp[t]);
                neg_logp_sum -= lp[t];
            }
            let rewards = kl_penalized_rewards(scores[i], lp, rp, kl_coef, estimator, placement);
            for (t, r) in rewards.iter().enumerate() {
                close(*r, trl_rewards[i][t], &format!("{name} reward [{i}][{t}]"));
            }
            let m = rewards.len();
            let (adv, ret) = gae(&rewards, &values0[i][..m], gamma, lambda);
            for t in 0..m {
                close(ret[t], trl_returns[i][t], &format!("{name} return [{i}][{t}]"));
                v_old.push(values0[i][t]);
                v_new.push(vpred[i][t]);
                v_ret.push(ret[t]);
            }
            raw_adv.extend_from_slice(&adv[..n]);
            old.extend_from_slice(lp);
            new.extend_from_slice(&new_logprobs[i][..n]);
            at_tokens.extend((0..n).map(|t| (i, t)));
        }
        whiten(&mut raw_adv);
        for (k, &(i, t)) in at_tokens.iter().enumerate() {
            close(raw_adv[k], trl_adv[i][t], &format!("{name} whitened advantage [{i}][{t}]"));
        }
        let clip = case["cliprange"].as_f64().unwrap();
        let vclip = case["cliprange_value"].as_f64().unwrap();
        let pg = scalar(clipped_policy_loss(t1(&new), t1(&old), t1(&raw_adv), clip));
        close(pg, f(&case["pg_loss"]), &format!("{name} policy loss"));
        let vf = scalar(clipped_value_loss(t1(&v_new), t1(&v_old), t1(&v_ret), vclip));
        close(vf, f(&case["vf_loss"]), &format!("{name} value loss"));
        close(value_clip_fraction(&v_new, &v_old, &v_ret, vclip), f(&case["vf_clipfrac"]), "vf_clipfrac");
        let (ratio, approx_kl, clipfrac) = ratio_stats(&new, &old, &raw_adv, clip);
        close(clipfrac, f(&case["pg_clipfrac"]), "pg_clipfrac");
        // TRL averages approxkl and the ratio over every slot of the padded batch, where padding
        // has log-ratio 0 (ratio 1); ours over response tokens only.
        let (tokens, slots) = (new.len() as f32, (rows * width) as f32);
        let pad = slots - tokens;
        close(approx_kl * tokens / slots, f(&case["approxkl"]), "approxkl (TRL: padded mean)");
        close((ratio * tokens + pad) / slots, f(&case["ratio_mean"]), "mean ratio (TRL: padded mean)");
        // objective/*: the KL and its penalty per response agree; TRL's entropy counts each padding
        // slot's INVALID_LOGPROB (1.0), ours only the response tokens.
        close(kl_sum / rows as f32, f(&case["objective_kl"]), "objective/kl");
        close(-kl_coef * kl_sum / rows as f32, f(&case["objective_non_score_reward"]), "objective/non_score_reward");
        close((neg_logp_sum - pad) / rows as f32, f(&case["objective_entropy"]), "objective/entropy (TRL: padding -1)");
    }
    assert_eq!(placements_seen, (true, true), "both score placements are checked");
}

/// GRPO's group-normalised advantages, per-token k3 KL, clip ratios and the loss under each of
/// TRL's aggregations, against trl 1.16.0's `GRPOTrainer`.
#[test]
fn grpo_advantages_and_losses_match_trl() {
    let fx = fixtures();
    let g = &fx["grpo"];
    let group = g["num_generations"].as_u64().unwrap() as usize;
    let rewards = vec(&g["rewards"]);
    for (scale, key) in [(true, "group"), (false, "none")] {
        let (adv, zero) = group_advantages(&rewards, group, scale);
        let want = vec(&g["advantages"][key]["advantages"]);
        for (k, (a, w)) in adv.iter().zip(&want).enumerate() {
            close(*a, *w, &format!("advantage {k} (scale {key})"));
        }
        let want_zero: Vec<bool> = vec(&g["advantages"][key]["is_std_zero"]).iter().map(|&z| z > 0.5).collect();
        assert_eq!(zero, want_zero, "zero-std groups ({key})");
    }
    let (adv, _) = group_advantages(&rewards, group, true);
    let lengths: Vec<usize> = vec(&g["lengths"]).iter().map(|&l| l as usize).collect();
    let (old_m, new_m, ref_m) = (mat(&g["old_logps"]), mat(&g["logps"]), mat(&g["ref_logps"]));
    let flat = |m: &[Vec<f32>]| -> Vec<f32> { m.iter().zip(&lengths).flat_map(|(r, &n)| r[..n].to_vec()).collect() };
    let (old, new, reference) = (flat(&old_m), flat(&new_m), flat(&ref_m));
    let token_adv: Vec<f32> = adv.iter().zip(&lengths).flat_map(|(&a, &n)| std::iter::repeat_n(a, n)).collect();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let loss_type = match case["loss_type"].as_str().unwrap() {
            "grpo" => GrpoLoss::Grpo,
            "bnpo" => GrpoLoss::Bnpo,
            "dr_grpo" => GrpoLoss::DrGrpo,
            "dapo" => GrpoLoss::Dapo,
            other => panic!("{other}"),
        };
        let beta = case["beta"].as_f64().unwrap();
        let (lo, hi) = (case["epsilon_low"].as_f64().unwrap(), case["epsilon_high"].as_f64().unwrap());
        let max_len = case["max_completion_length"].as_u64().unwrap() as usize;
        let weights = grpo_token_weights(&lengths, loss_type, max_len);
        let got = scalar(grpo_loss(t1(&new), t1(&old), t1(&reference), t1(&token_adv), t1(&weights), beta, lo, hi));
        close(got, f(&case["loss"]), &format!("{loss_type:?} loss, beta {beta}"));
        if let Some(kl) = case.get("per_token_kl") {
            let kl = flat(&mat(kl));
            for (k, (p, q)) in new.iter().zip(&reference).enumerate() {
                close(KlEstimator::K3.per_token(*p, *q), kl[k], &format!("k3 [{k}]"));
            }
        }
        let (low, high, region) = grpo_clip_fractions(&new, &old, &token_adv, lo, hi);
        let (want_low, want_high) = (flat(&mat(&case["clip_low"])), flat(&mat(&case["clip_high"])));
        let n = want_low.len() as f32;
        let (wl, wh) = (want_low.iter().sum::<f32>() / n, want_high.iter().sum::<f32>() / n);
        close(low, wl, "clip_ratio/low_mean");
        close(high, wh, "clip_ratio/high_mean");
        close(region, wl + wh, "clip_ratio/region_mean");
    }
}
