"""The GRPO-family loss: exact gradient identities of the KL estimators and placements on
tabular policies small enough to enumerate (expectations summed over every outcome weighted by
its probability, never sampled), advantages and every loss aggregation against hand
computations, and clear errors for bad input."""

import itertools
import math

import pytest
import torch

from divreg.losses import GRPOLoss, kl_per_token
from divreg.rl import combine_rewards, group_advantages

TOL = dict(rtol=1e-10, atol=1e-12)


def _grad(value, parameter):
    (gradient,) = torch.autograd.grad(value, parameter, retain_graph=True)
    return gradient


class TestOneStep:
    """A categorical over 5 tokens: pi = softmax(theta), ref = softmax(phi)."""

    theta = torch.tensor([0.3, -1.2, 0.8, 0.0, 2.0], dtype=torch.float64)
    phi = torch.tensor([1.0, 0.5, -0.7, 0.2, 0.1], dtype=torch.float64)

    def _setup(self):
        theta = self.theta.clone().requires_grad_()
        log_pi, log_ref = torch.log_softmax(theta, -1), torch.log_softmax(self.phi, -1)
        return theta, log_pi, log_ref, log_pi.exp().detach()

    def _expected_estimator_grad(self, estimator, direction="reverse"):
        theta, log_pi, log_ref, pi = self._setup()
        values = kl_per_token(log_pi[None], log_ref[None], estimator, direction)[0]  # every outcome
        return _grad((pi * values).sum(), theta)

    def test_k2_and_k3_k2grad_as_a_loss_give_the_reverse_kl_gradient(self):
        theta, log_pi, log_ref, _ = self._setup()
        reverse = _grad((log_pi.exp() * (log_pi - log_ref)).sum(), theta)
        for estimator in ("k2", "k3_k2grad"):
            torch.testing.assert_close(self._expected_estimator_grad(estimator), reverse, **TOL)

    def test_k3_as_a_loss_gives_the_forward_kl_gradient(self):
        theta, log_pi, log_ref, _ = self._setup()
        forward = _grad((log_ref.exp() * (log_ref - log_pi)).sum(), theta)
        got = self._expected_estimator_grad("k3")
        torch.testing.assert_close(got, forward, **TOL)
        torch.testing.assert_close(self._expected_estimator_grad("k3", "forward"), forward, **TOL)
        reverse = _grad((log_pi.exp() * (log_pi - log_ref)).sum(), theta)
        assert (got - reverse).abs().max() > 1e-2  # not the reverse KL's gradient

    def test_k1_as_a_loss_gives_zero(self):
        torch.testing.assert_close(self._expected_estimator_grad("k1"), torch.zeros(5, dtype=torch.float64), **TOL)

    def test_k1_in_the_reward_gives_the_reverse_kl_gradient_through_the_policy_gradient(self):
        theta, log_pi, log_ref, pi = self._setup()
        beta = 0.7
        loss = GRPOLoss(kl_estimator="k1", kl_placement="reward")
        logprobs, ref = log_pi[:, None], log_ref[:, None]  # 5 one-token completions, one per outcome
        mask = torch.ones(5, 1, dtype=torch.bool)
        rewards = loss.penalized_rewards(torch.zeros(5, dtype=torch.float64), logprobs, ref, mask, beta)
        out = loss(logprobs, None, pi * rewards, mask, tokens=1, sequences=1, ref_logprobs=ref, kl_coef=beta)
        reverse = _grad((log_pi.exp() * (log_pi - log_ref)).sum(), theta)
        # minimizing the loss = ascending the penalized reward: its gradient is +beta grad KL(pi || ref)
        torch.testing.assert_close(_grad(out.loss, theta), beta * reverse, **TOL)
        assert out.kl == 0  # no KL term in the loss


class TestSequences:
    """Three steps over four tokens, a tabular policy per prefix (1 + 4 + 16 contexts)."""

    steps, vocab = 3, 4

    def _tables(self):
        generator = torch.Generator().manual_seed(0)
        contexts = sum(self.vocab ** t for t in range(self.steps))
        theta = torch.randn(contexts, self.vocab, generator=generator, dtype=torch.float64).requires_grad_()
        phi = torch.randn(contexts, self.vocab, generator=generator, dtype=torch.float64)
        return theta, phi

    def _context_index(self, prefix):
        offset = sum(self.vocab ** t for t in range(len(prefix)))
        return offset + sum(token * self.vocab ** i for i, token in enumerate(reversed(prefix)))

    def _enumerate(self, theta, phi):
        """(logprobs (S, 3), ref_logprobs (S, 3)) of every sequence, and per-context (log pi, log ref)."""
        log_pi, log_ref = torch.log_softmax(theta, -1), torch.log_softmax(phi, -1)
        sequences = list(itertools.product(range(self.vocab), repeat=self.steps))
        rows = [[self._context_index(seq[:t]) for t in range(self.steps)] for seq in sequences]
        index = torch.tensor(rows)  # (S, 3) context of each step
        tokens = torch.tensor(sequences)  # (S, 3)
        return log_pi[index, tokens], log_ref[index, tokens], log_pi, log_ref, index

    def _sequence_kl_grad(self, theta, phi):
        logprobs, ref, *_ = self._enumerate(theta, phi)
        probability = logprobs.sum(-1).exp()
        return _grad((probability * (logprobs - ref).sum(-1)).sum(), theta)

    def _per_position_grad(self, theta, phi, forward):
        """sum over contexts c of P(c) grad KL_t(c), the context's probability held fixed."""
        log_pi, log_ref = torch.log_softmax(theta, -1), torch.log_softmax(phi, -1)
        context_probability = torch.zeros(log_pi.shape[0], dtype=torch.float64)
        for t in range(self.steps):
            for prefix in itertools.product(range(self.vocab), repeat=t):
                probability = 1.0
                for s in range(t):
                    probability *= float(log_pi[self._context_index(prefix[:s]), prefix[s]].detach().exp())
                context_probability[self._context_index(prefix)] = probability
        if forward:
            per_context = (log_ref.exp() * (log_ref - log_pi)).sum(-1)
        else:
            per_context = (log_pi.exp() * (log_pi - log_ref)).sum(-1)
        return _grad((context_probability * per_context).sum(), theta)

    def test_k1_summed_in_the_reward_gives_the_sequence_kl_gradient(self):
        theta, phi = self._tables()
        logprobs, ref, *_ = self._enumerate(theta, phi)
        probability = logprobs.sum(-1).exp().detach()  # (S,)
        beta = 0.3
        loss = GRPOLoss(kl_estimator="k1", kl_placement="reward")
        mask = torch.ones_like(logprobs, dtype=torch.bool)
        rewards = loss.penalized_rewards(torch.zeros(len(probability), dtype=torch.float64), logprobs, ref, mask, beta)
        out = loss(logprobs, None, probability * rewards, mask, tokens=1, sequences=1)
        torch.testing.assert_close(_grad(out.loss, theta), beta * self._sequence_kl_grad(theta, phi), **TOL)

    @pytest.mark.parametrize("estimator,forward", [("k2", False), ("k3_k2grad", False), ("k3", True)])
    def test_per_token_losses_give_the_per_position_gradient_not_the_sequence_one(self, estimator, forward):
        theta, phi = self._tables()
        logprobs, ref, *_ = self._enumerate(theta, phi)
        probability = logprobs.sum(-1).exp().detach()
        values = kl_per_token(logprobs, ref, estimator)  # (S, 3)
        got = _grad((probability[:, None] * values).sum(), theta)
        torch.testing.assert_close(got, self._per_position_grad(theta, phi, forward), **TOL)
        if not forward:  # the per-position reverse-KL gradient misses the context terms of the sequence KL
            assert (got - self._sequence_kl_grad(theta, phi)).abs().max() > 1e-2


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    group_1, group_2 = rewards[:4], rewards[4:]
    expected = torch.cat([(group_1 - 0.5) / (group_1.std() + 1e-4), (group_2 - 0.625) / (group_2.std() + 1e-4)])
    torch.testing.assert_close(group_advantages(rewards, 4), expected, **TOL)
    torch.testing.assert_close(group_advantages(rewards, 4, "none"),
                               torch.tensor([0.5, -0.5, -0.5, 0.5, 0.375, 0.375, -0.125, -0.625], dtype=torch.float64),
                               **TOL)
    torch.testing.assert_close(group_advantages(rewards, 4, "batch"),
                               group_advantages(rewards, 4, "none") / (rewards.std() + 1e-4), **TOL)
    assert group_advantages(torch.ones(4, dtype=torch.float64), 2).eq(0).all()  # equal rewards: 0, not NaN
    with pytest.raises(ValueError, match="group_size=1 has no group standard deviation"):
        group_advantages(rewards, 1)
    with pytest.raises(ValueError, match="multiple of group_size=3"):
        group_advantages(rewards, 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        group_advantages(torch.tensor([1.0, math.nan]), 2)


def test_combine_rewards_weights_none_and_errors():
    combined = combine_rewards([[1.0, 0.0, None], [0.5, None, 1.0]], ["exact", "format"], [2.0, 0.5])
    assert combined.tolist() == [2.25, 0.0, 0.5]
    with pytest.raises(ValueError, match="reward function 'format' returned nan for completion 1"):
        combine_rewards([[1.0, 0.0], [0.5, math.nan]], ["exact", "format"])
    with pytest.raises(ValueError, match="reward function 'format' returned 1 rewards for 2 completions"):
        combine_rewards([[1.0, 0.0], [0.5]], ["exact", "format"])
    with pytest.raises(ValueError, match=r"every reward function returned None for completion\(s\) \[1\]"):
        combine_rewards([[1.0, None], [0.5, None]], ["exact", "format"])


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                      "seq_mean_token_sum_norm"])
def test_every_loss_aggregation_by_hand(loss_agg):
    """Values of the clipped surrogate and its aggregation against a hand computation, with old
    log-probs that make some ratios clip (epsilon_high = 0.28, DAPO's clip-higher)."""
    generator = torch.Generator().manual_seed(3)
    logprobs = (-torch.rand(3, 4, generator=generator, dtype=torch.float64)).requires_grad_()
    old = logprobs.detach() + torch.tensor([[0.0, 0.5, -0.5, 0.1], [-0.3, 0.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]],
                                           dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, False, False]])
    advantages = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    loss = GRPOLoss(epsilon_low=0.2, epsilon_high=0.28, loss_agg=loss_agg, max_completion_length=6)
    out = loss(logprobs, old, advantages, mask, tokens=7, sequences=3)
    per_token, clipped = [], 0
    for i in range(3):
        row = []
        for t in range(4):
            ratio = math.exp(float(logprobs[i, t].detach() - old[i, t]))
            a = float(advantages[i])
            row.append(-min(ratio * a, min(max(ratio, 0.8), 1.28) * a) if mask[i, t] else 0.0)
            clipped += bool(mask[i, t]) and min(max(ratio, 0.8), 1.28) * a < ratio * a  # the clipped branch is the min
        per_token.append(row)
    sums = [sum(row) for row in per_token]
    counts = [int(m.sum()) for m in mask]
    expected = {"token_mean": sum(sums) / 7, "seq_mean_token_mean": sum(s / c for s, c in zip(sums, counts)) / 3,
                "seq_mean_token_sum": sum(sums) / 3, "seq_mean_token_sum_norm": sum(sums) / (3 * 6)}[loss_agg]
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-12)
    assert clipped == 1 and math.isclose(float(out.clip_fraction), clipped / 7, rel_tol=1e-12)  # e^0.5 with A > 0


def test_sequence_importance_ratio_is_gspo():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.2, -1.9, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    out = GRPOLoss(importance_sampling="sequence", epsilon_high=10.0).forward(
        logprobs, old, torch.tensor([1.0], dtype=torch.float64), mask, tokens=2, sequences=1)
    ratio = math.exp((0.2 - 0.1) / 2)  # mean log-ratio over the 2 completion tokens
    assert math.isclose(float(out.loss.detach()), -ratio * 2 / 2, rel_tol=1e-12)  # the same ratio at both tokens, token mean
    gradient = _grad(out.loss, logprobs)
    torch.testing.assert_close(gradient, torch.tensor([[-ratio / 2, -ratio / 2, 0.0]], dtype=torch.float64), **TOL)


@pytest.mark.parametrize("options,message", [
    ({"kl_estimator": "k1"}, "k1 as a loss has zero gradient"),
    ({"kl_placement": "reward"}, "kl_placement='reward' subtracts k1"),
    ({"kl_direction": "forward", "kl_estimator": "k2"}, "kl_direction='forward' is available as"),
    ({"loss_agg": "seq_mean_token_sum_norm"}, "pass max_completion_length"),
    ({"loss_agg": "dapo"}, "loss_agg must be one of"),
    ({"epsilon_low": 1.5}, r"epsilon_low must be a number in \[0, 1\]"),  # 1: no lower clip (Lp-Reg)
    ({"epsilon_high": math.inf}, r"epsilon_high must be a number in \[0, inf\)"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        GRPOLoss(**options)


def test_bad_batches_are_clear_errors():
    loss = GRPOLoss()
    logprobs = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"completion\(s\) \[1\] of this batch have no token"):
        loss(logprobs, None, torch.zeros(2), mask, tokens=2, sequences=2)
    with pytest.raises(ValueError, match="advantages must have shape"):
        loss(logprobs, None, torch.zeros(3), mask | True, tokens=6, sequences=2)
    with pytest.raises(ValueError, match="needs the reference's log-probs"):
        loss(logprobs, None, torch.zeros(2), mask | True, tokens=6, sequences=2, kl_coef=0.1)


def test_kl_clamp_is_verls_on_the_k3_forms_only():
    logprobs = torch.tensor([[0.0, -30.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-25.0, 0.0, -1.2]], dtype=torch.float64)
    clamped = kl_per_token(logprobs, ref, "k3", clamp=True)
    r = (logprobs - ref).clamp(-20, 20)
    torch.testing.assert_close(clamped, (torch.exp(-r) - 1 + r).clamp(-10, 10), **TOL)
    assert clamped[0, 0] == 10 and clamped[0, 1] == 10 and 0 < clamped[0, 2] < 0.1  # |r| = 25, 30 clamp; 0.2 not
    torch.testing.assert_close(kl_per_token(logprobs, ref, "k2", clamp=True), 0.5 * (logprobs - ref) ** 2, **TOL)


def _verl_k3_plus(logprobs, ref):
    """verl's "k3+" (core_algos.kl_penalty after PR #6058), written out: k2's gradient, the value
    of k3 on the log-ratio ref - logprob clamped to [-20, 20], itself clamped to [-10, 10]."""
    kl = (ref - logprobs.detach()).clamp(-20, 20)
    forward = (torch.exp(kl) - kl - 1).clamp(-10, 10)
    backward = 0.5 * (logprobs - ref).square()
    return backward - backward.detach() + forward


@pytest.mark.parametrize("r", [-25.0, -5.0, -3.0, -0.5, 0.5, 3.0, 25.0])
def test_clamped_k3_k2grad_keeps_k2s_gradient_and_clamps_only_the_value(r):
    """verl's "k3+": the clamps act on the detached value; the gradient is r at every r (the bug
    was a gradient of 0 where k3 > 10 or |r| > 20)."""
    ref = torch.tensor([[-1.0]], dtype=torch.float64)
    logprobs = (ref + r).clone().requires_grad_()
    value = kl_per_token(logprobs, ref, "k3_k2grad", clamp=True)
    gradient = _grad(value.sum(), logprobs)
    torch.testing.assert_close(gradient, torch.tensor([[r]], dtype=torch.float64), **TOL)
    clamped_r = min(max(r, -20.0), 20.0)
    k3_value = math.expm1(-clamped_r) + clamped_r
    torch.testing.assert_close(value.detach(), torch.tensor([[min(k3_value, 10.0)]], dtype=torch.float64), **TOL)
    reference = _verl_k3_plus(logprobs, ref)
    torch.testing.assert_close(value.detach(), reference.detach(), **TOL)
    torch.testing.assert_close(gradient, _grad(reference.sum(), logprobs), **TOL)
    # the same through GRPOLoss(kl_clamp=True): a zero advantage leaves the KL term alone, coefficient 1
    loss = GRPOLoss(kl_estimator="k3_k2grad", kl_clamp=True)
    out = loss(logprobs, None, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), tokens=1, sequences=1,
               ref_logprobs=ref, kl_coef=1.0)
    torch.testing.assert_close(_grad(out.loss, logprobs), torch.tensor([[r]], dtype=torch.float64), **TOL)
    torch.testing.assert_close(out.kl, value.detach().reshape(()), **TOL)


def test_a_sequence_ratio_defaults_to_gspos_per_sequence_mean_and_refuses_length_weighting():
    """GSPO (arXiv 2507.18071): (1/G) sum_i min(s_i A_i, clip(s_i) A_i), each sequence one term
    whatever its length. Two sequences of 1 and 3 tokens, ratio 1 (on-policy), A = (1, 1): the
    loss is -1 and each sequence's tokens share a gradient of 1/2 (token_mean would give the long
    one 3/4 of it)."""
    loss = GRPOLoss(importance_sampling="sequence")
    assert loss.loss_agg == "seq_mean_token_mean" and GRPOLoss().loss_agg == "token_mean"
    logprobs = torch.tensor([[-1.0, 0.0, 0.0], [-0.5, -2.0, -1.5]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    out = loss(logprobs, None, torch.ones(2, dtype=torch.float64), mask, tokens=4, sequences=2)
    assert math.isclose(float(out.loss.detach()), -1.0, rel_tol=1e-12)
    # d/d logprob of s_i = exp(mean log-ratio): 1/|y_i| per token, then 1/G
    expected = torch.tensor([[-0.5, 0.0, 0.0], [-1 / 6, -1 / 6, -1 / 6]], dtype=torch.float64)
    torch.testing.assert_close(_grad(out.loss, logprobs), expected, **TOL)
    for aggregation in ("token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"):
        with pytest.raises(ValueError, match="would weight each sequence's term by its length, which is not GSPO"):
            GRPOLoss(importance_sampling="sequence", loss_agg=aggregation, max_completion_length=4)
    GRPOLoss(importance_sampling="sequence", loss_agg="seq_mean_token_mean")  # explicit: allowed
