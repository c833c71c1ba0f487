"""The RL papers' components on hand-made groups: APO's DADS weights (d = 1/8 and 7/8) and STCR
advantages, InfAlign's calibrated rewards with ties and transforms, Lp-Reg's proxy, token
selection and penalty, KDRL's decaying coefficient, RAPO's reweighted reference (phi = 0 and 1)."""

import math

import pytest
import torch

from divreg.losses import GRPOLoss, LpReg, lp_reg_penalty
from divreg.rl import (calibrated_rewards, ctrl_transform, dads_kl_weights, group_difficulty, lp_reg_token_mask,
                       min_p_proxy_logprobs, reweighted_reference_logits, stcr_advantages)
from divreg.schedules import LinearDecay


def test_dads_weights_by_hand():
    # group 1: 7 of 8 correct (d = 1/8); group 2: 1 of 8 correct (d = 7/8); group 3: none correct (d = 1)
    correct = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0] + [1, 0, 0, 0, 0, 0, 0, 0] + [0] * 8)
    advantages = torch.tensor([0.3] * 7 + [-2.0] + [2.5] + [-0.3] * 7 + [0.5] * 8)
    weights = dads_kl_weights(correct, advantages, 8)
    assert weights[0] == pytest.approx(1 - math.exp(-math.e * 7 / 8), abs=1e-15)  # 0.907
    assert weights[0] == pytest.approx(0.907, abs=5e-4)
    assert weights[8] == pytest.approx(1 - math.exp(-math.e / 8), abs=1e-15)  # 0.288 at d = 7/8
    assert weights[8] == pytest.approx(0.288, abs=5e-4)
    assert weights[7] == 1 and (weights[9:16] == 1).all()  # negative advantages keep w = 1
    assert (weights[16:] == 1).all()  # d = 1: w = 1 (the official code's jump)
    assert torch.equal(group_difficulty(correct, 8)[[0, 8, 16]], torch.tensor([1 / 8, 7 / 8, 1.0], dtype=torch.float64))
    assert dads_kl_weights(correct, advantages, 8, scale=1.0)[0] == pytest.approx(1 - math.exp(-7 / 8), abs=1e-15)
    with pytest.raises(ValueError, match="multiple of group_size=8"):
        dads_kl_weights(correct[:7], advantages[:7], 8)
    with pytest.raises(ValueError, match="0/1 values"):
        dads_kl_weights(correct * 2, advantages, 8)


def test_stcr_scales_long_wrong_answers_only_in_groups_with_a_right_one():
    correct = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0])
    lengths = torch.tensor([10, 20, 15, 40, 1015, 5, 15, 30])  # mu+ = 15
    advantages = torch.tensor([1.5, 1.5, -0.5, -0.5, -0.5, -0.5, -0.5, 0.2])
    shaped = stcr_advantages(advantages, lengths, correct, 8)
    b = 1.00001
    expected = advantages.double().clone()
    for i, delta in ((3, 25), (4, 1000), (7, 15)):
        expected[i] *= 1 + (1 - b ** -delta)
    torch.testing.assert_close(shaped, expected, rtol=0, atol=1e-15)
    assert shaped[4] == pytest.approx(-0.5 * (1 + 1 - b ** -1000), abs=1e-15) and shaped[4] < -0.5
    assert shaped[7] > 0.2  # a positive advantage on a wrong answer grows too (as the official code)
    assert shaped[2] == -0.5 and shaped[6] == -0.5  # not longer than mu+ (15 == mu+ is not longer)
    none_right = stcr_advantages(advantages, lengths, torch.zeros(8, dtype=torch.long), 8)
    assert torch.equal(none_right, advantages.double())


def test_calibrated_rewards_with_ties_and_transforms():
    reference = torch.tensor([[0.0, 1.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    rewards = torch.tensor([[1.0, 3.0, -1.0], [5.0, 6.0, 4.0]])
    c = calibrated_rewards(rewards, reference)
    torch.testing.assert_close(c, torch.tensor([[(1 + 0.5 * 2) / 4, 1.0, 0.0], [0.5, 1.0, 0.0]], dtype=torch.float64))
    assert calibrated_rewards(rewards, reference, ties="lower")[0, 0] == 0.75
    assert calibrated_rewards(rewards, reference, ties="higher")[0, 0] == 0.25
    assert calibrated_rewards(torch.tensor([1.0, 5.0]), reference).tolist() == [0.5, 0.5]
    torch.testing.assert_close(ctrl_transform(c, "best_of_n", t=2.0), torch.exp(2.0 * c))
    torch.testing.assert_close(ctrl_transform(c, "worst_of_n", t=2.0), -torch.exp(-2.0 * c))
    assert torch.equal(ctrl_transform(c), c)
    # under the reference itself (distinct rewards) C is uniform over the grid: mean 1/2
    samples = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert calibrated_rewards(samples, samples).mean(-1).tolist() == pytest.approx([0.5] * 3, abs=1e-12)
    with pytest.raises(ValueError, match="same P"):
        calibrated_rewards(rewards, reference[:1])
    with pytest.raises(ValueError, match="finite"):
        calibrated_rewards(torch.tensor([[math.nan]]), reference[:1])
    with pytest.raises(ValueError, match="t must be"):
        ctrl_transform(c, "best_of_n", t=0.0)


def test_min_p_proxy_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.195, 0.005]], dtype=torch.float64)
    logits = probs.log()
    # kappa = 0.02: keep p >= 0.01 -> the last token is filtered; Z = 0.995
    got = min_p_proxy_logprobs(logits, torch.tensor([1]), kappa=0.02)
    assert got.item() == pytest.approx(math.log(0.3 / 0.995), abs=1e-12)
    filtered = min_p_proxy_logprobs(logits, torch.tensor([3]), kappa=0.02)
    assert filtered.item() == -math.inf
    assert min_p_proxy_logprobs(logits, torch.tensor([3]), kappa=0.0).item() == pytest.approx(math.log(0.005))
    assert min_p_proxy_logprobs(logits, torch.tensor([-100])).item() == 0


def test_lp_reg_selects_the_lowest_probability_tokens_of_negative_completions_below_the_proxy():
    logprobs = torch.log(torch.tensor([[0.5, 0.01, 0.2, 0.3], [0.02, 0.4, 0.001, 0.6], [0.003, 0.9, 0.5, 0.5]]))
    proxy = logprobs + 0.1  # every token below its proxy ...
    proxy[1, 2] = -math.inf  # ... except a min-p-filtered one
    mask = torch.tensor([[True] * 4, [True] * 4, [True, True, True, False]])
    advantages = torch.tensor([-1.0, -0.5, 1.0])
    # 8 negative-completion tokens; rho = 0.25 -> k = 2: the two lowest are 0.001 (filtered) and 0.01
    selected = lp_reg_token_mask(logprobs, proxy, advantages, mask, rho=0.25)
    assert selected.nonzero().tolist() == [[0, 1]]
    # rho = 0.5 -> k = 4: 0.001 (filtered), 0.01, 0.02, 0.2
    assert lp_reg_token_mask(logprobs, proxy, advantages, mask, rho=0.5).nonzero().tolist() == [[0, 1], [0, 2], [1, 0]]
    # k = max(1, floor(0.2 * 8)) = 1: not applied (k > 1 only)
    assert not lp_reg_token_mask(logprobs, proxy, advantages, mask, rho=0.2).any()
    # the penalty: k3 of log proxy - log pi, clamped; its gradient pushes a low token up
    pi = torch.tensor([0.01, 0.001], dtype=torch.float64, requires_grad=True)
    proxy_lp = torch.log(torch.tensor([0.05, 0.5], dtype=torch.float64))
    values = lp_reg_penalty(pi.log(), proxy_lp)
    u = proxy_lp[0] - math.log(0.01)
    u = float(u)
    assert values[0].item() == pytest.approx(math.exp(u) - u - 1, abs=1e-12) and values[1].item() == 10.0
    (grad,) = torch.autograd.grad(values.sum(), pi)
    assert grad[0] < 0 and grad[1] == 0  # lowering the loss raises pi; clamped: no gradient
    assert lp_reg_penalty(torch.tensor([-1.0]), torch.tensor([-math.inf])).item() == 0


def test_grpo_loss_with_lp_reg_replaces_the_clipped_term_of_the_selected_tokens():
    generator = torch.Generator().manual_seed(3)
    logprobs = (-torch.rand(2, 3, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    old = logprobs.detach() + 0.5  # ratio e^-0.5 < 1 - eps: the clipped branch for A < 0
    mask = torch.ones(2, 3, dtype=torch.bool)
    advantages = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    proxy = logprobs.detach() + 1.0
    selected = torch.tensor([[True, False, False], [False, False, False]])
    loss_fn = GRPOLoss()
    plain = loss_fn(logprobs, old, advantages, mask, tokens=6, sequences=2)
    shaped = loss_fn(logprobs, old, advantages, mask, tokens=6, sequences=2, lp_reg=LpReg(selected, proxy, 1.0))
    ratio = (logprobs - old).exp()
    clipped = -torch.min(ratio * advantages[:, None], ratio.clamp(0.8, 1.2) * advantages[:, None])
    by_hand = clipped.clone()
    by_hand[0, 0] = -advantages[0] * ratio[0, 0] + lp_reg_penalty(logprobs[0, 0], proxy[0, 0])
    assert shaped.loss.item() == pytest.approx(by_hand.sum().item() / 6, abs=1e-12)
    assert plain.loss.item() == pytest.approx(clipped.sum().item() / 6, abs=1e-12)
    (grad,) = torch.autograd.grad(shaped.loss, logprobs)
    assert grad[0, 0] != 0 and grad[0, 1] == 0  # the selected token is unclipped; its neighbour stays clipped


def test_kl_weights_scale_each_completions_kl_term():
    logprobs = torch.log(torch.tensor([[0.5, 0.2], [0.3, 0.6]], dtype=torch.float64))
    ref = torch.log(torch.tensor([[0.4, 0.3], [0.5, 0.5]], dtype=torch.float64))
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss_fn = GRPOLoss(kl_estimator="k2", loss_agg="seq_mean_token_mean")
    weights = torch.tensor([0.25, 1.0], dtype=torch.float64)
    out = loss_fn(logprobs, None, torch.zeros(2, dtype=torch.float64), mask, tokens=4, sequences=2,
                  ref_logprobs=ref, kl_coef=0.1, kl_weights=weights)
    k2 = 0.5 * (logprobs - ref) ** 2
    assert out.kl.item() == pytest.approx(((k2.mean(-1) * weights).sum() / 2).item(), abs=1e-15)
    with pytest.raises(ValueError, match="kl_weights must have shape"):
        loss_fn(logprobs, None, torch.zeros(2), mask, tokens=4, sequences=2, ref_logprobs=ref, kl_coef=0.1,
                kl_weights=weights[:1])


def test_linear_decay_to_a_floor():
    beta = LinearDecay(5e-3, floor=1e-3, delta=5e-5)
    assert beta(0) == 5e-3 and beta(40) == pytest.approx(3e-3) and beta(80) == pytest.approx(1e-3)
    assert beta(10_000) == 1e-3
    with pytest.raises(ValueError, match="floor"):
        LinearDecay(1e-3, floor=2e-3, delta=1e-5)


def test_reweighted_reference_at_phi_0_and_1():
    ref = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    phi = torch.tensor([0.0, 1.0], dtype=torch.float64)
    hat = torch.log_softmax(reweighted_reference_logits(ref, phi), -1)
    torch.testing.assert_close(hat[0], torch.full((3, 7), -math.log(7), dtype=torch.float64))  # uniform
    torch.testing.assert_close(hat[1], torch.log_softmax(ref[1], -1))  # the reference itself
    half = torch.log_softmax(reweighted_reference_logits(ref, torch.tensor([0.5, 0.5], dtype=torch.float64)), -1)
    expected = torch.log_softmax(0.5 * torch.log_softmax(ref, -1), -1)  # ref^phi renormalized per position
    torch.testing.assert_close(half, expected)
    with pytest.raises(ValueError, match="phi must be"):
        reweighted_reference_logits(ref, torch.tensor([1.5, 0.0]))


def test_rapo_target_under_the_temperature_is_the_reweighted_reference():
    """The loss divides its target's logits by T again: kl_target_signal undoes that, so at phi = 1
    the forward KL is the one to the reference itself and at phi = 0 the one to the uniform
    distribution; without phi the target is the reference's signal itself."""
    from divreg.divergences import forward_kl
    from divreg.rl import kl_target_signal
    from divreg.targets import DenseLogits

    def rapo_target(ref, phi, temperature):
        return kl_target_signal(DenseLogits(ref), phi, temperature).logits

    generator = torch.Generator().manual_seed(0)
    policy, ref = (torch.randn(2, 3, 9, generator=generator, dtype=torch.float64) for _ in range(2))
    for temperature in (1.0, 0.7):
        target = rapo_target(ref, torch.tensor([1.0, 0.0], dtype=torch.float64), temperature)
        got = forward_kl(policy, target, temperature=temperature)
        torch.testing.assert_close(got[0], forward_kl(policy, ref, temperature=temperature)[0], rtol=1e-12, atol=1e-12)
        uniform = torch.zeros(3, 9, dtype=torch.float64)
        torch.testing.assert_close(got[1], forward_kl(policy[1], uniform, temperature=temperature), rtol=1e-12,
                                   atol=1e-12)
    signal = DenseLogits(ref)
    assert kl_target_signal(signal, None, 0.7) is signal
