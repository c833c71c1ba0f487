"""The DPO family against hand formulas in float64: DPO, conservative and robust DPO, SLiC's hinge,
IPO and length-normalized DPO; the f-divergence links against the generators' derivatives (by
autograd), reverse KL = DPO exactly, alpha's limits; metrics and clear errors."""

import pytest
import torch
import torch.nn.functional as F

from divreg.losses import (PreferenceLoss, f_divergence_link, hypo_kl_surrogate, leave_one_out_baseline,
                            preference_loss)


def _pairs(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return [(-torch.rand(n, generator=g, dtype=torch.float64) * 20) for _ in range(4)]


def test_dpo_and_its_label_smoothed_forms_by_hand():
    pc, pr, rc, rr = _pairs()
    h = 0.1 * ((pc - rc) - (pr - rr))
    out = preference_loss(pc, pr, rc, rr, beta=0.1)
    torch.testing.assert_close(out.loss, -F.logsigmoid(h), rtol=0, atol=1e-15)
    torch.testing.assert_close(out.margins, h, rtol=0, atol=1e-15)
    assert torch.equal(out.reward_accuracy, (h > 0).double())
    smoothed = preference_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.2).loss
    torch.testing.assert_close(smoothed, -0.8 * F.logsigmoid(h) - 0.2 * F.logsigmoid(-h), rtol=0, atol=1e-15)
    robust = preference_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.2, loss="robust").loss
    torch.testing.assert_close(robust, (-0.8 * F.logsigmoid(h) + 0.2 * F.logsigmoid(-h)) / 0.6, rtol=0, atol=1e-14)
    torch.testing.assert_close(preference_loss(pc, pr, rc, rr, beta=0.1, loss="hinge").loss, torch.relu(1 - h),
                               rtol=0, atol=1e-15)
    free = preference_loss(pc, pr, None, None, beta=0.1).loss  # reference-free: the reference is 0
    torch.testing.assert_close(free, -F.logsigmoid(0.1 * (pc - pr)), rtol=0, atol=1e-15)


def test_length_normalized_losses_by_hand():
    pc, pr, rc, rr = _pairs(1)
    nc, nr = torch.tensor([3, 5, 1, 8, 2, 4.0], dtype=torch.float64), torch.tensor([6, 2, 2, 1, 9, 3.0], dtype=torch.float64)
    per_token = (pc - rc) / nc - (pr - rr) / nr
    ipo = preference_loss(pc, pr, rc, rr, beta=0.5, loss="ipo", chosen_tokens=nc, rejected_tokens=nr).loss
    torch.testing.assert_close(ipo, (per_token - 1 / (2 * 0.5)) ** 2, rtol=0, atol=1e-13)
    norm = preference_loss(pc, pr, rc, rr, beta=0.5, loss="sigmoid_norm", chosen_tokens=nc, rejected_tokens=nr).loss
    torch.testing.assert_close(norm, -F.logsigmoid(0.5 * per_token), rtol=0, atol=1e-15)


GENERATORS = {
    "reverse_kl": lambda u: u * torch.log(u),
    "forward_kl": lambda u: -torch.log(u),
    "js": lambda u: u * torch.log(u) - (1 + u) * torch.log((1 + u) / 2),
    "alpha": lambda u, a=0.3: (u ** (1 - a) - (1 - a) * u - a) / (a * (a - 1)),
}


@pytest.mark.parametrize("divergence", list(GENERATORS))
def test_links_are_the_generators_derivatives_up_to_a_constant(divergence):
    """f'(u) by autograd on each f: the margins (differences of links) are exactly f'(u_w) - f'(u_l)."""
    logratios = torch.linspace(-6, 6, 25, dtype=torch.float64)
    u = logratios.exp().requires_grad_()
    (derivative,) = torch.autograd.grad(GENERATORS[divergence](u).sum(), u)
    link = f_divergence_link(logratios, divergence, alpha=0.3)
    torch.testing.assert_close(link - link[12], derivative - derivative[12], rtol=1e-12, atol=1e-12)


def test_reverse_kl_is_dpo_and_alpha_has_the_kl_limits():
    pc, pr, rc, rr = _pairs(2)
    dpo = preference_loss(pc, pr, rc, rr, beta=0.2)
    again = preference_loss(pc, pr, rc, rr, beta=0.2, divergence="alpha", alpha=0.0)
    assert torch.equal(dpo.loss, again.loss)
    near = preference_loss(pc, pr, rc, rr, beta=0.2, divergence="alpha", alpha=1e-7).loss
    torch.testing.assert_close(near, dpo.loss, rtol=1e-5, atol=1e-6)
    forward = preference_loss(pc, pr, rc, rr, beta=0.2, divergence="forward_kl").loss
    torch.testing.assert_close(preference_loss(pc, pr, rc, rr, beta=0.2, divergence="alpha", alpha=1.0).loss, forward,
                               rtol=1e-14, atol=1e-14)
    # TRL's alpha link, (t^(a' - 1) - 1) / (a' - 1) with a' = 1 - alpha, is the same function
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(f_divergence_link(x, "alpha", 0.3), (torch.exp(-0.3 * x) - 1) / -0.3, rtol=1e-14,
                               atol=1e-14)


def test_gradients_are_finite_at_large_log_ratios():
    pc, pr, rc, rr = (t.clone().requires_grad_() for t in _pairs(3))
    for divergence in ("forward_kl", "js", "alpha"):
        out = preference_loss(pc * 10, pr, rc, rr, beta=0.1, divergence=divergence)
        grads = torch.autograd.grad(out.loss.sum(), [pc, pr])
        assert all(torch.isfinite(g).all() for g in grads)


def test_bad_input_is_a_clear_error():
    pc, pr, rc, rr = _pairs(4)
    with pytest.raises(ValueError, match="loss must be one of"):
        preference_loss(pc, pr, rc, rr, loss="dpo")
    with pytest.raises(ValueError, match="beta must be"):
        preference_loss(pc, pr, rc, rr, beta=0.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
        preference_loss(pc, pr, rc, rr, loss="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="pass chosen_tokens"):
        preference_loss(pc, pr, rc, rr, loss="ipo")
    with pytest.raises(ValueError, match="at least one token"):
        preference_loss(pc, pr, rc, rr, loss="ipo", chosen_tokens=torch.zeros(6, dtype=torch.float64),
                        rejected_tokens=torch.ones(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="one shape"):
        preference_loss(pc, pr[:3], rc, rr)
    with pytest.raises(ValueError, match="divergence must be one of"):
        preference_loss(pc, pr, rc, rr, divergence="hellinger")
    with pytest.raises(ValueError, match="alpha must be"):
        f_divergence_link(pc, "alpha", alpha=1.5)


# ---- combined losses, SFT term, TRL's DPOTrainer as a reference, HyPO's surrogate ----

def _token_pairs(seed=0, b=5, t=7):
    """Per-token log-probs and masks of chosen and rejected answers of different lengths."""
    g = torch.Generator().manual_seed(seed)
    values = [-torch.rand(b, t, generator=g, dtype=torch.float64) * 3 for _ in range(2)]
    lengths = [torch.randint(1, t + 1, (b,), generator=g) for _ in range(2)]
    masks = [torch.arange(t)[None] < n[:, None] for n in lengths]
    refs = [-torch.rand(b, generator=g, dtype=torch.float64) * 10 for _ in range(2)]
    return values, masks, refs


def _trl_loss(loss_types, weights, chosen, rejected, masks, refs, beta, label_smoothing=0.0,
              divergence="reverse_kl", alpha_coef=1.0):
    """TRL's ``DPOTrainer._compute_loss`` itself, on given per-token log-probs: a stand-in model
    returns them as its ``log_probs`` (0 off the completion, as TRL's fused head gives for
    label -100), the reference log-probs are 'precomputed'."""
    from types import SimpleNamespace

    from trl.trainer.dpo_trainer import DPOTrainer

    b, t = chosen.shape
    per_token = torch.cat([torch.where(masks[0], chosen, 0.0), torch.where(masks[1], rejected, 0.0)])
    completion = torch.cat([torch.cat([torch.zeros(b, 1), masks[0].float()], 1),
                            torch.cat([torch.zeros(b, 1), masks[1].float()], 1)]).long()  # (2B, T+1)

    class Model(torch.nn.Module):
        def forward(self, **kwargs):
            return SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                                   mean_logits=torch.zeros_like(per_token),
                                   is_top1=torch.zeros_like(per_token, dtype=torch.bool))

    class Gather:
        gather_for_metrics = gather = staticmethod(lambda x: x)
        device = torch.device("cpu")

    from collections import defaultdict

    model = Model()
    trainer = SimpleNamespace(model=model, accelerator=Gather(), aux_loss_enabled=False, ld_alpha=None,
                              precompute_ref_logps=True, f_divergence_type=divergence,
                              f_alpha_divergence_coef=alpha_coef, loss_types=loss_types, loss_weights=weights,
                              beta=beta, label_smoothing=label_smoothing, use_weighting=False,
                              _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                              _total_train_tokens=0, _tp_size=1, args=SimpleNamespace())
    inputs = {"input_ids": torch.zeros(2 * b, t + 1, dtype=torch.long), "attention_mask": torch.ones(2 * b, t + 1),
              "completion_mask": completion, "ref_chosen_logps": refs[0], "ref_rejected_logps": refs[1]}
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


@pytest.mark.parametrize("losses,divergence,alpha", [
    ({"sigmoid": 1.0}, "reverse_kl", 0.5),
    ({"hinge": 1.0}, "reverse_kl", 0.5),
    ({"ipo": 1.0}, "reverse_kl", 0.5),
    ({"sigmoid_norm": 1.0}, "reverse_kl", 0.5),
    ({"robust": 1.0}, "reverse_kl", 0.5),
    ({"sigmoid": 0.8, "hinge": 0.3}, "reverse_kl", 0.5),
    ({"sigmoid": 1.0}, "forward_kl", 0.5),
    ({"sigmoid": 1.0}, "js", 0.5),
    ({"sigmoid": 0.5, "hinge": 0.2}, "alpha", 0.3),
    ({"ipo": 0.5, "sigmoid_norm": 0.2}, "reverse_kl", 0.5),
])
@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_the_losses_equal_trl_dpotrainer_on_the_same_log_probs(losses, divergence, alpha, sft_weight):
    """TRL (a test dependency only) computes each loss type both have, their weighted sum (MPO)
    and its 'sft' term from the same per-token log-probs; label smoothing only for 'robust'
    (TRL's 'sigmoid' no longer smooths). The length-normalized losses are compared under the
    reverse KL only: with another divergence TRL divides the link f'(u) of the whole answer by its
    length, we apply the link to the per-token log-ratio (documented in preference_loss)."""
    pytest.importorskip("trl")
    (chosen, rejected), masks, refs = _token_pairs(len(losses))
    smoothing = 0.2 if "robust" in losses else 0.0
    ours = PreferenceLoss(losses, beta=0.3, label_smoothing=smoothing, divergence=divergence, alpha=alpha,
                          sft_weight=sft_weight)(chosen, masks[0], rejected, masks[1], refs[0], refs[1])
    names = {"js": "js_divergence", "alpha": "alpha_divergence"}
    types, weights = list(losses), list(losses.values())
    if sft_weight:
        types, weights = types + ["sft"], weights + [sft_weight]
    # TRL's alpha link only takes float32 (its clamp table has no float64): compare that one in float32
    dtype = torch.float32 if divergence == "alpha" else torch.float64
    trl = _trl_loss(types, weights, chosen.to(dtype), rejected.to(dtype), masks, [r.to(dtype) for r in refs], 0.3,
                    smoothing, names.get(divergence, divergence), 1 - alpha)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours.loss, trl.to(torch.float64), rtol=tolerance, atol=tolerance)


def test_combined_loss_by_hand_and_its_split_invariance():
    (chosen, rejected), masks, refs = _token_pairs(3, b=6)
    module = PreferenceLoss({"sigmoid": 0.6, "ipo": 0.4}, beta=0.2, sft_weight=0.5)
    out = module(chosen, masks[0], rejected, masks[1], refs[0], refs[1])
    seq = [torch.where(m, v, 0.0).sum(1) for v, m in zip((chosen, rejected), masks)]
    lengths = [m.sum(1).double() for m in masks]
    h = 0.2 * ((seq[0] - refs[0]) - (seq[1] - refs[1]))
    ipo = (((seq[0] - refs[0]) / lengths[0] - (seq[1] - refs[1]) / lengths[1]) - 1 / 0.4) ** 2
    sft = -torch.where(masks[0], chosen, 0.0).sum() / masks[0].sum()
    expected = 0.6 * -F.logsigmoid(h).mean() + 0.4 * ipo.mean() + 0.5 * sft
    torch.testing.assert_close(out.loss, expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out.margins, h, rtol=0, atol=1e-14)
    assert torch.equal(out.reward_accuracy, (h > 0).double())
    assert set(out.parts) == {"sigmoid", "ipo", "sft"}
    torch.testing.assert_close(sum(out.parts.values()), out.loss.detach(), rtol=1e-14, atol=1e-14)
    # three micro-batches with the global counts sum to the whole batch's loss
    pieces = [slice(0, 2), slice(2, 3), slice(3, 6)]
    total = sum(module(chosen[s], masks[0][s], rejected[s], masks[1][s], refs[0][s], refs[1][s], num_pairs=6,
                       num_chosen_tokens=masks[0].sum()).loss for s in pieces)
    torch.testing.assert_close(total, out.loss, rtol=1e-13, atol=1e-13)


def test_combined_loss_gradcheck():
    (chosen, rejected), masks, refs = _token_pairs(4, b=3, t=4)
    chosen, rejected = chosen.requires_grad_(), rejected.requires_grad_()
    for divergence in ("reverse_kl", "forward_kl", "js", "alpha"):
        module = PreferenceLoss({"sigmoid": 1.0, "ipo": 0.5, "sigmoid_norm": 0.3}, beta=0.5, divergence=divergence,
                                alpha=0.4, sft_weight=0.2)
        assert torch.autograd.gradcheck(lambda c, r: module(c, masks[0], r, masks[1], refs[0], refs[1]).loss,
                                        (chosen, rejected))


def test_combined_loss_bad_options():
    with pytest.raises(ValueError, match="losses must name some of"):
        PreferenceLoss({"dpo": 1.0})
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        PreferenceLoss({"sigmoid": -1.0})
    with pytest.raises(ValueError, match="nothing would be trained"):
        PreferenceLoss({"sigmoid": 0.0})
    with pytest.raises(ValueError, match="beta must be"):
        PreferenceLoss("sigmoid", beta=-1)
    (chosen, rejected), masks, refs = _token_pairs(5)
    with pytest.raises(ValueError, match="bool chosen_mask"):
        PreferenceLoss()(chosen, masks[0].long(), rejected, masks[1])


def test_hypo_surrogate_expected_gradient_is_the_exact_kl_gradient():
    """A tabular policy over 4 responses: averaging the surrogate's gradient over every k-tuple of
    samples, weighted by its probability (exact enumeration, no sampling), gives the gradient of
    KL(pi || ref) to 1e-10; without the baseline the expectation is the same, with it each
    sample's coefficient is l_i minus the mean of the others."""
    import itertools

    theta = torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.tensor([0.0, 0.5, -0.7, 1.1], dtype=torch.float64), 0)
    log_pi = torch.log_softmax(theta, 0)
    (exact,) = torch.autograd.grad((log_pi.exp() * (log_pi - ref)).sum(), theta)
    k = 3
    expected = torch.zeros_like(theta)
    for tuple_ in itertools.product(range(4), repeat=k):
        index = torch.tensor(tuple_)
        log_pi = torch.log_softmax(theta, 0)
        weight = log_pi[index].sum().exp().detach()
        (grad,) = torch.autograd.grad(hypo_kl_surrogate(log_pi[index], ref[index], k).mean(), theta)
        expected += weight * grad
    torch.testing.assert_close(expected, exact, rtol=0, atol=1e-10)
    # the coefficients by hand
    l = torch.tensor([1.0, 2.0, 4.0, -1.0, 0.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(leave_one_out_baseline(l, 3), torch.tensor([-2.0, -0.5, 2.5, -2.5, -1.0, 3.5],
                                                                          dtype=torch.float64))
    with pytest.raises(ValueError, match="group_size must be an integer >= 2"):
        leave_one_out_baseline(l, 1)
    with pytest.raises(ValueError, match="multiple of group_size"):
        leave_one_out_baseline(l, 4)


def test_dpo_optimum_is_the_tilted_policy():
    """With Bradley-Terry labels on every pair (full coverage), the minimizer of DPO's expected
    loss over a tabular policy is the KL-regularized optimum pi0 exp(r / beta) / Z
    (divreg.alignment.tilted_policy as ground truth)."""
    from divreg.alignment import tilted_policy

    g = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)
    reward = torch.randn(5, generator=g, dtype=torch.float64)
    beta = 0.7
    i, j = torch.triu_indices(5, 5, 1)
    prefer_i = torch.sigmoid(reward[i] - reward[j])
    logits = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], lr=1, max_iter=1000, tolerance_grad=1e-15, tolerance_change=1e-18,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        log_pi = torch.log_softmax(logits, 0)
        forward = preference_loss(log_pi[i], log_pi[j], ref.log()[i], ref.log()[j], beta=beta).loss
        backward = preference_loss(log_pi[j], log_pi[i], ref.log()[j], ref.log()[i], beta=beta).loss
        loss = (prefer_i * forward + (1 - prefer_i) * backward).sum()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    torch.testing.assert_close(torch.softmax(logits.detach(), 0), tilted_policy(ref, reward, beta), rtol=0, atol=1e-7)


def _hypo_gradient_variance(theta, ref_logits, k, baseline):
    """(expected gradient, total variance E||g - E g||^2) of the per-prompt HyPO estimator over
    every k-tuple of samples of a tabular policy (exact enumeration)."""
    import itertools

    theta = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.tensor(ref_logits, dtype=torch.float64), 0)
    gradients, weights = [], []
    for tuple_ in itertools.product(range(len(ref)), repeat=k):
        index = torch.tensor(tuple_)
        log_pi = torch.log_softmax(theta, 0)[index]
        surrogate = (hypo_kl_surrogate(log_pi, ref[index], k) if baseline
                     else (log_pi - ref[index]).detach() * log_pi)  # the plain score-function estimator
        gradients.append(torch.autograd.grad(surrogate.mean(), theta)[0])
        weights.append(log_pi.sum().exp().detach())
    gradients, weights = torch.stack(gradients), torch.stack(weights)
    mean = (weights[:, None] * gradients).sum(0)
    return mean, float((weights * ((gradients - mean) ** 2).sum(1)).sum())


def test_hypo_leave_one_out_baseline_is_unbiased_but_lowers_the_variance_only_with_a_shared_offset():
    """What the docstring says, exactly: both estimators have the same expectation; far from the
    reference (log-ratios sharing a large offset) the baseline lowers the variance, near it
    (k = 2) it raises it."""
    near = ([0.3, -1.2, 0.8, 0.1], [0.0, 0.5, -0.7, 1.1])  # KL 0.64
    far = ([0.0, 0.0, 0.0, -3.0], [-4.0, -4.0, -4.0, 3.0])  # KL 5.7
    for theta, ref_logits in (near, far):
        with_baseline, without = (_hypo_gradient_variance(theta, ref_logits, 2, b) for b in (True, False))
        torch.testing.assert_close(with_baseline[0], without[0], rtol=0, atol=1e-12)
    assert _hypo_gradient_variance(*near, 2, True)[1] == pytest.approx(0.8962, abs=1e-4)
    assert _hypo_gradient_variance(*near, 2, False)[1] == pytest.approx(0.2782, abs=1e-4)
    assert _hypo_gradient_variance(*far, 2, True)[1] == pytest.approx(1.5714, abs=1e-4)
    assert _hypo_gradient_variance(*far, 2, False)[1] == pytest.approx(11.5332, abs=1e-4)
