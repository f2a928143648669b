"""TRL's alignment losses on fixed seeded tensors -> tests/fixtures/align/trl_losses.json.

Run with the `.venv-trl` interpreter (`tools/reference/make_model_venvs.sh trl`: trl==1.16.0 with the
torch/transformers pins of requirements-model.txt, plus the trl==0.29.1 wheel, not installed):

    .venv-trl/bin/python tools/reference/trl_fixtures.py [OUT.json]

Every formula is TRL's own code, never retyped here:
- trl==1.16.0 (installed): DPO's sigmoid loss, the pairwise reward loss, GRPO's group-normalised
  advantages, its per-token loss (clipped surrogate + beta * k3 KL) aggregated four ways (grpo, bnpo,
  dr_grpo, dapo), its KL metric inputs and clip ratios. These formulas live inside trainer methods
  (`DPOTrainer._compute_loss`, `RewardTrainer.compute_loss`,
  `GRPOTrainer._generate_and_score_completions` / `_compute_loss`); the blocks are cut verbatim out
  of the installed files (whose sha256 is checked) and run on the fixed tensors.
- trl==0.29.1 (the last release with PPO; 1.x removed `trl.experimental.ppo`): `masked_mean`,
  `masked_var`, `masked_whiten`, `truncate_response` and, from `PPOTrainer.train()`, the rollout block
  (padding masks, KL estimator k1/k3, score one slot after the response, GAE, whitening) and the
  minibatch loss block (clipped value and policy losses, clip fractions, approxkl, mean ratio),
  cut verbatim out of `trl/experimental/ppo/ppo_trainer.py` inside the wheel (wheel and file sha256
  checked). `first_true_indices` is trl 1.16's (`trl.experimental.utils`).
"""

import hashlib
import json
import math
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import trl

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/align/trl_losses.json"
SITE = Path(trl.__file__).parent
PPO_WHEEL = ROOT / ".venv-trl/ppo-wheel/trl-0.29.1-py3-none-any.whl"

SHA256 = {
    "trainer/grpo_trainer.py": "1c3dc2253fb3653269c11dfce4f946f74201a4cb63e0887a37e8e3bb4a3f5503",
    "trainer/dpo_trainer.py": "f69f0f78f07990aa5a36157dbc81c23b259b9acd9f9423f1a6e69777446fb92f",
    "trainer/reward_trainer.py": "754b26e25858188a051b1070d55c6b7713efa3dc4a06864291b55f6ee9ddc455",
    "wheel": "f9490cd1af93f3dce1cfdfe0fa1de108dbc46a2f6c2f90485cc2b4021c43eef3",
    "trl/experimental/ppo/ppo_trainer.py": "6564892eb4422586ece3a000d83177f5ae39309e950d6258a70386174f269738",
}


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def checked(name: str, data: bytes) -> bytes:
    got = sha(data)
    if got != SHA256[name]:
        sys.exit(f"{name}: sha256 {got}, expected {SHA256[name]} (another TRL version?)")
    return data


def installed(rel: str) -> str:
    assert trl.__version__ == "1.16.0", trl.__version__
    return checked(rel, (SITE / rel).read_bytes()).decode()


def ppo_source() -> str:
    wheel = PPO_WHEEL.read_bytes()
    checked("wheel", wheel)
    with zipfile.ZipFile(PPO_WHEEL) as z:
        return checked("trl/experimental/ppo/ppo_trainer.py", z.read("trl/experimental/ppo/ppo_trainer.py")).decode()


def block(src: str, start: str, end: str, end_occurrence: int = 1) -> str:
    """The lines from the first one containing `start` to the `end_occurrence`-th one after it
    containing `end`, dedented: a verbatim piece of TRL."""
    lines = src.splitlines()
    i = next(k for k, l in enumerate(lines) if start in l)
    seen = 0
    for j in range(i, len(lines)):
        if end in lines[j]:
            seen += 1
            if seen == end_occurrence:
                return textwrap.dedent("\n".join(lines[i : j + 1]))
    raise SystemExit(f"end marker {end!r} not found after {start!r}")


def run(code: str, ns: dict) -> dict:
    exec(compile(code, "<trl>", "exec"), ns)
    return ns


def L(t) -> list:
    return t.detach().double().tolist()


torch.manual_seed(0)
g = torch.Generator().manual_seed(1234)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float32) * scale


fixtures = {"trl_version": trl.__version__, "ppo_trl_version": "0.29.1", "torch_version": torch.__version__}

# ------------------------------------------------------------------------------------------------
# DPO: sigmoid loss (reverse KL), DPOTrainer._compute_loss's loss block.
dpo_src = installed("trainer/dpo_trainer.py")
dpo_code = block(dpo_src, "chosen_logratios = chosen_logps - ref_chosen_logps", "loss += per_sequence_loss.mean() * loss_weight")
n = 6
dpo_in = {
    "policy_chosen": randn(n, scale=3.0) - 20,
    "policy_rejected": randn(n, scale=3.0) - 20,
    "reference_chosen": randn(n, scale=3.0) - 20,
    "reference_rejected": randn(n, scale=3.0) - 20,
}
dpo_cases = []
for beta in [0.1, 0.5]:
    stub = types.SimpleNamespace(
        f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, use_weighting=False
    )
    ns = run(
        dpo_code,
        {
            "self": stub, "torch": torch, "F": F, "math": math, "loss": 0.0,
            "chosen_logps": dpo_in["policy_chosen"], "rejected_logps": dpo_in["policy_rejected"],
            "ref_chosen_logps": dpo_in["reference_chosen"], "ref_rejected_logps": dpo_in["reference_rejected"],
        },
    )
    dpo_cases.append({"beta": beta, "loss": float(ns["loss"])})
fixtures["dpo"] = {"inputs": {k: L(v) for k, v in dpo_in.items()}, "cases": dpo_cases}

# ------------------------------------------------------------------------------------------------
# Reward model: pairwise loss, RewardTrainer.compute_loss (no margin).
rm_src = installed("trainer/reward_trainer.py")
rm_code = block(rm_src, "rewards_chosen, rewards_rejected = torch.chunk(", "loss = -nn.functional.logsigmoid(rewards_chosen - rewards_rejected).mean()")
logits = randn(2 * n, 1, scale=2.0)
ns = run(rm_code, {"torch": torch, "nn": nn, "outputs": types.SimpleNamespace(logits=logits), "inputs": {}})
fixtures["reward"] = {"chosen": L(ns["rewards_chosen"]), "rejected": L(ns["rewards_rejected"]), "loss": float(ns["loss"])}

# ------------------------------------------------------------------------------------------------
# PPO (trl 0.29.1's PPOTrainer.train()).
ppo_src = ppo_source()
helpers = block(ppo_src, "def truncate_response(", "return postprocessed_responses")
helpers += "\n\n" + block(ppo_src, "def masked_mean(", "return whitened")
from trl.experimental.utils import first_true_indices  # noqa: E402

pns = run(helpers, {"torch": torch, "first_true_indices": first_true_indices})
rollout_code = block(ppo_src, "response_idxs = torch.arange(responses.shape[1]", "advantages = torch.masked_fill(advantages, padding_mask, 0)")
loss_code = block(ppo_src, "new_logprobs = torch.masked_fill(", "ratio_stats[ppo_epoch_idx, minibatch_idx, gradient_accumulation_idx] = ratio.mean()")
metrics_code = block(ppo_src, "mean_kl = kl.sum(1).mean()", "rlhf_reward = mean_non_score_reward + scores.mean()")
seq_code = block(ppo_src, "sequence_length = first_true_indices(postprocessed_response", "sequence_length = first_true_indices(postprocessed_response")

PAD, STOP, T = 0, 5, 6
# Row 0 and 1 stop early (TRL puts the score one slot after them), row 2 fills the width without a
# stop token (no slot after it: TRL puts the score on its last token), row 3 stops on its last slot.
raw_responses = torch.tensor(
    [[7, 8, 5, 9, 9, 9], [9, 5, 7, 7, 7, 7], [7, 7, 7, 7, 7, 7], [8, 8, 8, 8, 8, 5]], dtype=torch.long
)
B = raw_responses.shape[0]
postprocessed_response = pns["truncate_response"](STOP, PAD, raw_responses)
ns = run(seq_code, {"first_true_indices": first_true_indices, "postprocessed_response": postprocessed_response,
                     "processing_class": types.SimpleNamespace(pad_token_id=PAD)})
sequence_lengths = ns["sequence_length"]
logprobs0 = -torch.rand(B, T, generator=g) * 3 - 0.05
ref_logprobs0 = logprobs0 + randn(B, T, scale=0.3)
values0 = randn(B, T, scale=0.5)
scores = randn(B, scale=1.5)

ppo_cases = []
for kl_estimator, gamma, lam in [("k1", 1.0, 0.95), ("k3", 0.9, 0.8)]:
    args = types.SimpleNamespace(kl_coef=0.05, kl_estimator=kl_estimator, whiten_rewards=False, gamma=gamma, lam=lam,
                                 cliprange=0.2, cliprange_value=0.15, vf_coef=0.1, temperature=1.0)
    ns = run(rollout_code, {"torch": torch, "args": args, "responses": postprocessed_response, "sequence_lengths": sequence_lengths,
                            "logprobs": logprobs0.clone(), "ref_logprobs": ref_logprobs0.clone(), "values": values0.clone(),
                            "scores": scores.clone(), "INVALID_LOGPROB": pns.get("INVALID_LOGPROB", 1.0),
                            "masked_whiten": pns["masked_whiten"]})
    assert "INVALID_LOGPROB = 1.0" in ppo_src
    roll = ns
    # One minibatch update on the whole rollout: new log-probs near the old ones (some clipped),
    # new values near the old ones (some clipped), the value read at one more position.
    new_logprobs = logprobs0 + randn(B, T, scale=0.25)
    vpred = values0 + randn(B, T, scale=0.3)
    vpred_temp = torch.cat([vpred, randn(B, 1)], dim=1).unsqueeze(-1)  # context_length 1: [:, 0:-1]
    V = 11
    logits = randn(B, T, V)
    stats = lambda: torch.zeros(1, 1, 1)  # noqa: E731
    inds = torch.arange(B)
    lns = {
        "torch": torch, "args": args, "masked_mean": pns["masked_mean"], "INVALID_LOGPROB": 1.0,
        "new_logprobs": new_logprobs, "padding_mask": roll["padding_mask"], "padding_mask_p1": roll["padding_mask_p1"],
        "micro_batch_inds": inds, "vpred_temp": vpred_temp, "context_length": 1, "mb_values": roll["values"][inds],
        "mb_return": roll["returns"][inds], "mb_advantage": roll["advantages"][inds], "mb_logprobs": roll["logprobs"][inds],
        "accelerator": types.SimpleNamespace(backward=lambda loss: None),
        "optimizer": types.SimpleNamespace(step=lambda: None, zero_grad=lambda: None), "logits": logits,
        "approxkl_stats": stats(), "pg_clipfrac_stats": stats(), "pg_loss_stats": stats(), "vf_loss_stats": stats(),
        "vf_clipfrac_stats": stats(), "entropy_stats": stats(), "ratio_stats": stats(),
        "ppo_epoch_idx": 0, "minibatch_idx": 0, "gradient_accumulation_idx": 0,
    }
    lns = run(loss_code, lns)
    mns = run(metrics_code, {"kl": roll["kl"], "logprobs": roll["logprobs"], "non_score_reward": roll["non_score_reward"],
                             "scores": scores})
    ppo_cases.append({
        "kl_estimator": kl_estimator, "kl_coef": args.kl_coef, "gamma": gamma, "lambda": lam,
        "cliprange": args.cliprange, "cliprange_value": args.cliprange_value,
        "kl": L(roll["kl"]), "rewards": L(roll["rewards"]), "values": L(roll["values"]),
        "returns": L(roll["returns"]), "advantages": L(roll["advantages"]),
        "padding_mask": L(roll["padding_mask"].float()), "padding_mask_p1": L(roll["padding_mask_p1"].float()),
        "new_logprobs": L(new_logprobs), "vpred": L(vpred),
        "pg_loss": float(lns["pg_loss"]), "vf_loss": float(lns["vf_loss"]), "pg_clipfrac": float(lns["pg_clipfrac"]),
        "vf_clipfrac": float(lns["vf_clipfrac"]), "approxkl": float(lns["approxkl"]), "ratio_mean": float(lns["ratio"].mean()),
        "objective_kl": float(mns["mean_kl"]), "objective_entropy": float(mns["mean_entropy"]),
        "objective_non_score_reward": float(mns["mean_non_score_reward"]), "objective_rlhf_reward": float(mns["rlhf_reward"]),
    })
# masked_whiten on its own (eps inside the square root), with a near-constant input too.
wx = randn(2, 5)
wmask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
near = torch.tensor([[1.0, 1.0 + 2**-16, 1.0 - 2**-16, 1.0]])  # exact in f32: no cancellation error
fixtures["whiten"] = {
    "x": L(wx), "mask": L(wmask.float()), "whitened": L(pns["masked_whiten"](wx, wmask)),
    "near_constant": L(near), "near_constant_whitened": L(pns["masked_whiten"](near, torch.ones_like(near, dtype=torch.bool))),
}
fixtures["ppo"] = {
    "pad": PAD, "stop": STOP, "responses": L(postprocessed_response), "sequence_lengths": L(sequence_lengths),
    "logprobs": L(logprobs0), "ref_logprobs": L(ref_logprobs0), "values": L(values0), "scores": L(scores),
    "cases": ppo_cases,
}

# ------------------------------------------------------------------------------------------------
# GRPO (trl 1.16.0): group-normalised advantages and the loss.
grpo_src = installed("trainer/grpo_trainer.py")
adv_code = block(grpo_src, "mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)", "is_std_zero = torch.isclose(std_rewards")
grpo_loss_code = block(grpo_src, 'advantages = inputs["advantages"]', 'raise ValueError(f"Unknown loss type: {self.loss_type}")', 2)
clip_code = block(grpo_src, "is_low_clipped = (coef_1 < 1 - self.epsilon_low) & (advantages < 0)", "is_region_clipped = is_low_clipped | is_high_clipped")
from trl.trainer.utils import nanstd  # noqa: E402

G, P, TG = 4, 3, 5
# Group 0 mixed rewards, group 1 all equal (zero std: advantages 0), group 2 two values.
rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 2.0, 0.25])
lengths = torch.tensor([5, 3, 1, 4, 5, 2, 5, 3, 1, 4, 2, 5])
mask = (torch.arange(TG).unsqueeze(0) < lengths.unsqueeze(1)).float()
old_logps = -torch.rand(G * P, TG, generator=g) * 2 - 0.1
per_token_logps = old_logps + randn(G * P, TG, scale=0.3)
ref_logps = old_logps + randn(G * P, TG, scale=0.2)
grpo_adv = {}
for scale in ["group", "none"]:
    ns = run(adv_code, {"torch": torch, "nanstd": nanstd, "rewards": rewards.clone(), "num_generations": G,
                        "self": types.SimpleNamespace(scale_rewards=scale)})
    grpo_adv[scale] = {"advantages": L(ns["advantages"]), "is_std_zero": L(ns["is_std_zero"].float())}
advantages = torch.tensor(grpo_adv["group"]["advantages"], dtype=torch.float32)
grpo_cases = []
for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
    for beta in [0.0, 0.04]:
        stub = types.SimpleNamespace(
            off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
            args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
            loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28 if loss_type == "dapo" else 0.2, use_vllm=False,
            model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
            max_completion_length=TG, accelerator=types.SimpleNamespace(num_processes=1),
        )
        inputs = {"advantages": advantages, "old_per_token_logps": old_logps, "ref_per_token_logps": ref_logps,
                  "num_items_in_batch": mask.sum()}
        ns = run(grpo_loss_code, {"torch": torch, "self": stub, "inputs": inputs, "per_token_logps": per_token_logps,
                                  "mask": mask, "entropy_mask": None})
        cns = run(clip_code, {"self": stub, "coef_1": ns["coef_1"], "advantages": ns["advantages"]})
        case = {"loss_type": loss_type, "beta": beta, "epsilon_low": stub.epsilon_low, "epsilon_high": stub.epsilon_high,
                "max_completion_length": TG, "loss": float(ns["loss"]),
                "clip_low": L(cns["is_low_clipped"].float()), "clip_high": L(cns["is_high_clipped"].float())}
        if beta != 0.0:
            case["per_token_kl"] = L(ns["per_token_kl"])
        grpo_cases.append(case)
fixtures["grpo"] = {
    "num_generations": G, "rewards": L(rewards), "lengths": L(lengths), "old_logps": L(old_logps),
    "logps": L(per_token_logps), "ref_logps": L(ref_logps), "advantages": grpo_adv, "cases": grpo_cases,
}

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps(fixtures, indent=1) + "\n")
print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
