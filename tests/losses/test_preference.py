"""The DPO family against hand formulas in float64: DPO, conservative and robust DPO, SLiC's hinge,
IPO and length-normalized DPO; the f-divergence links against the generators' derivatives (by
autograd), reverse KL = DPO exactly, alpha's limits; metrics and clear errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from divreg.losses import f_divergence_link, preference_loss


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
