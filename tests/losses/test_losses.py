"""Loss modules against hand-written references (torch.nn.functional, POT), plus the
target memory and the ramp schedule."""

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from divreg.losses import KDLoss, PSKDLoss, SinKDLoss, TwoViewKL
from divreg.schedules import Constant, LinearRamp
from divreg.targets import PastPredictions


def _batch(seed=0, batch=8, classes=5):
    generator = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)).requires_grad_()
    teacher = 2 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return logits, teacher, labels


@pytest.mark.parametrize("temperature,weight", [(1.0, 0.5), (4.0, 0.9), (2.0, 1.0), (3.0, 0.0)])
def test_kd_forward_kl_matches_hinton_formula(temperature, weight):
    logits, teacher, labels = _batch()
    loss = KDLoss("forward_kl", temperature=temperature, kd_weight=weight)(logits, teacher, labels)
    kl = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher / temperature, -1),
                  log_target=True, reduction="batchmean")
    expected = (1 - weight) * F.cross_entropy(logits, labels) + weight * temperature**2 * kl
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)


def test_kd_any_divergence_ignore_index_and_no_t_squared():
    logits, teacher, labels = _batch(seed=1)
    labels[2] = -100
    loss = KDLoss("reverse_kl", temperature=2.0, kd_weight=0.7, t_squared=False)(logits, teacher, labels)
    keep = labels != -100
    rkl = F.kl_div(F.log_softmax(teacher[keep] / 2, -1), F.log_softmax(logits[keep] / 2, -1), log_target=True,
                   reduction="batchmean")
    expected = 0.3 * F.cross_entropy(logits[keep], labels[keep]) + 0.7 * rkl
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    jsd = KDLoss("generalized_jsd", beta=0.3, temperature=1.0, kd_weight=1.0)(logits, teacher)
    assert jsd.item() > 0
    with pytest.raises(ValueError, match="kd_weight"):
        KDLoss(kd_weight=1.5)
    with pytest.raises(ValueError, match="unknown divergence"):
        KDLoss("kl")


def test_past_predictions_memory():
    labels = torch.tensor([2, 0, 1, 2])
    memory = PastPredictions(labels, num_classes=3)
    torch.testing.assert_close(memory.lookup(torch.tensor([0, 1])), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    memory.update(torch.tensor([1]), torch.tensor([[0.2, 0.5, 0.3]]))
    torch.testing.assert_close(memory.lookup(torch.tensor([1, 3])), torch.tensor([[0.2, 0.5, 0.3], [0.0, 0, 1]]))
    restored = PastPredictions(torch.zeros(4, dtype=torch.long), num_classes=3)
    restored.load_state_dict(memory.state_dict())
    torch.testing.assert_close(restored.memory, memory.memory)
    with pytest.raises(ValueError, match="labels must lie"):
        PastPredictions(torch.tensor([3]), num_classes=3)
    with pytest.raises(ValueError, match="probs must have shape"):
        memory.update(torch.tensor([0]), torch.ones(1, 4))


def test_linear_ramp_is_pskd_alpha_schedule():
    ramp = LinearRamp(0.8, total_steps=200)
    assert [ramp(t) for t in (0, 99, 199, 250)] == pytest.approx([0.8 / 200, 0.4, 0.8, 0.8], abs=1e-15)
    assert Constant(0.3)(12) == 0.3
    with pytest.raises(ValueError):
        LinearRamp(0.8, total_steps=0)
    with pytest.raises(ValueError):
        ramp(-1)


def test_pskd_target_mixes_label_and_last_epoch_prediction():
    logits, _, labels = _batch(seed=2, batch=4, classes=3)
    indices = torch.tensor([3, 0, 2, 1])
    memory = PastPredictions(torch.tensor([0, 1, 2, 0]), num_classes=3)
    previous = torch.softmax(torch.randn(4, 3, dtype=torch.float64), -1)
    memory.update(torch.arange(4), previous)
    loss_fn = PSKDLoss(memory, LinearRamp(0.8, total_steps=10))
    loss = loss_fn(logits, labels, indices, epoch=4)
    alpha = 0.8 * 5 / 10
    target = (1 - alpha) * F.one_hot(labels, 3).double() + alpha * previous.float().double()[indices]
    expected = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)  # memory is float32
    loss_fn.remember(indices, logits)
    torch.testing.assert_close(memory.lookup(indices), torch.softmax(logits.detach(), -1).float())


def test_sinkd_is_kd_plus_beta_times_pot_transport_cost():
    logits, teacher, labels = _batch(seed=3, batch=6)
    loss_fn = SinKDLoss(temperature=2.0, kd_weight=0.9, sinkhorn_weight=0.8, epsilon=0.1, n_iters=20)
    student_probs = torch.softmax(logits.detach() / 2, -1).numpy()
    teacher_probs = torch.softmax(teacher / 2, -1).numpy()
    cost = np.abs(student_probs[:, None, :] - teacher_probs[None, :, :]).sum(-1)
    weights = np.full(6, 1 / 6)
    expected_ot = ot.sinkhorn2(weights, weights, cost, reg=0.1, method="sinkhorn_log", numItermax=20, stopThr=0.0,
                               warn=False)
    kd = KDLoss("forward_kl", temperature=2.0, kd_weight=0.9, t_squared=False)(logits, teacher, labels)
    loss = loss_fn(logits, teacher, labels)
    assert abs(loss.item() - (kd.item() + 0.8 * float(expected_ot))) < 1e-6
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_two_view_kl():
    view1, view2, _ = _batch(seed=4)
    view2 = view2.requires_grad_()
    loss = TwoViewKL(weight=0.5, temperature=2.0)(view1, view2)
    expected = 0.5 * F.kl_div(F.log_softmax(view2 / 2, -1), F.log_softmax(view1 / 2, -1), log_target=True,
                              reduction="batchmean")
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    grads = torch.autograd.grad(loss, (view1, view2))
    assert all(g.abs().sum() > 0 for g in grads)  # both views are trained
    with pytest.raises(ValueError, match="weight"):
        TwoViewKL(weight=-1.0)


def test_lm_distill_loss_keeps_the_output_bias_on_the_fused_path():
    """A biased output layer (student and teacher): the fused path (HiddenStates with bias)
    equals the plain path on the biased logits, values and gradients, float64."""
    from divreg.losses import LMDistillLoss
    from divreg.targets import DenseLogits, HiddenStates

    generator = torch.Generator().manual_seed(6)
    shapes = {"hidden": (2, 5, 4), "weight": (30, 4), "bias": (30,), "t_hidden": (2, 5, 3), "t_weight": (30, 3),
              "t_bias": (30,)}
    tensors = {name: torch.randn(shape, generator=generator, dtype=torch.float64) * 2 for name, shape in shapes.items()}
    labels = torch.randint(0, 30, (2, 5), generator=generator)
    labels[1, 3:] = -100
    loss_fn = LMDistillLoss("generalized_jsd", beta=0.3, temperature=1.5, ce_weight=0.4, chunk_size=3)
    results = []
    for fused in (False, True):
        student = {k: tensors[k].clone().requires_grad_() for k in ("hidden", "weight", "bias")}
        signal = HiddenStates(student["hidden"], student["weight"], student["bias"])
        target = HiddenStates(tensors["t_hidden"], tensors["t_weight"], tensors["t_bias"])
        out = loss_fn(signal if fused else DenseLogits(signal.to_logits()),
                      target if fused else DenseLogits(target.to_logits()), labels, num_items_in_batch=9)
        results.append((out, torch.autograd.grad(out.loss, list(student.values()))))
    (plain, plain_grads), (fused, fused_grads) = results
    assert type(plain).__name__ == type(fused).__name__ == "LossOutput"
    for a, b in zip(plain, fused):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(plain_grads, fused_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert float(plain_grads[2].abs().sum()) > 0  # the bias is trained


def test_lm_distill_loss_keeps_float64_in_its_cross_entropy():
    """fp64 inputs stay fp64 in the CE term, as in the divergences (it was cast to fp32): the
    value agrees with a float64 formula to 1e-14, far below fp32 rounding."""
    from divreg.losses import LMDistillLoss
    from divreg.targets import DenseLogits

    generator = torch.Generator().manual_seed(8)
    logits = 30 * torch.randn(2, 4, 50, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 50, (2, 4), generator=generator)
    out = LMDistillLoss(divergence_weight=0.0, ce_weight=1.0)(DenseLogits(logits), DenseLogits(logits.clone()),
                                                              labels, num_items_in_batch=8)
    expected = (torch.logsumexp(logits, -1) - logits.gather(-1, labels[..., None]).squeeze(-1)).sum() / 8
    assert out.cross_entropy.dtype == torch.float64
    assert abs(float(out.cross_entropy) - float(expected)) < 1e-14 * float(expected)


def _released_sinkhorn(logits, teacher_logits, temperature=2.0, epsilon=0.1, n_iters=20):
    """The released SinKD code's transport term, written out (github.com/2018cx/SinKD, loss.py):
    K = exp(-W / epsilon), rows then columns normalized n_iters times, 0.001 * sum(P * W)."""
    p_s, p_t = torch.softmax(logits / temperature, 1), torch.softmax(teacher_logits / temperature, 1)
    cost = torch.cdist(p_s, p_t, p=1)
    plan = torch.exp(-cost / epsilon)
    for _ in range(n_iters):
        plan = plan / plan.sum(1, keepdim=True)
        plan = plan / plan.sum(0, keepdim=True)
    return 0.001 * (plan * cost).sum()


def test_sinkd_released_scaling_reproduces_the_released_code_and_the_mapping_holds():
    generator = torch.Generator().manual_seed(11)
    logits = 3 * torch.randn(16, 5, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(16, 5, generator=generator, dtype=torch.float64)
    released = SinKDLoss(scaling="released", temperature=3.5, ot_temperature=2.0)
    got_logits = logits.clone().requires_grad_()
    got = released.transport_cost(got_logits, teacher)
    expected_logits = logits.clone().requires_grad_()
    expected = _released_sinkhorn(expected_logits, teacher)  # T_OT = 2 whatever the KD temperature
    (got_grad,) = torch.autograd.grad(got, got_logits)
    (expected_grad,) = torch.autograd.grad(expected, expected_logits)
    assert abs(float(got.detach()) - float(expected.detach())) <= 1e-12 * float(expected.detach())
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-15)
    # the coupling form (s = 1) is the same OT problem: at convergence the released term is
    # exactly 0.001 * B times it, so beta * 0.001 * B in the coupling form reproduces the released beta
    converged = dict(temperature=3.5, ot_temperature=2.0, n_iters=500)
    coupling = SinKDLoss(**converged).transport_cost(logits, teacher)
    ordered = SinKDLoss(**converged, scaling="released").transport_cost(logits, teacher)
    assert 0.0 < float(coupling) <= 2.0
    assert abs(float(ordered) - 0.001 * 16 * float(coupling)) <= 1e-10 * float(ordered)
    with pytest.raises(ValueError, match="scaling must be one of"):
        SinKDLoss(scaling="paper")


MASKED_CASES = [("forward_kl", {}), ("reverse_kl", {}), ("generalized_jsd", {"beta": 0.5}), ("skew_kl", {"alpha": 0.1}),
                ("skew_reverse_kl", {"alpha": 0.1}), ("total_variation", {}), ("alpha_divergence", {"alpha": -0.5}),
                ("alpha_divergence", {"alpha": 2.0}), ("topk_kl", {"k": 2})]


@pytest.mark.parametrize("name,options", MASKED_CASES)
def test_a_masked_position_never_puts_nan_into_the_gradient(name, options):
    """At masked positions the target bans (-inf) a token the model gives mass to, so reverse KL
    (and alpha < 0) is +inf there. The plain paths (KDLoss, LMDistillLoss) give a finite loss
    and gradient equal to those of the valid positions alone; the fused path never reads masked
    rows (their teacher states are NaN here)."""
    from divreg.losses import LMDistillLoss
    from divreg.targets import DenseLogits, HiddenStates

    generator = torch.Generator().manual_seed(12)
    hidden = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    target_hidden = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    target_weight = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([[2, 3, -100], [4, -100, -100]])
    valid = labels != -100
    target_logits = target_hidden @ target_weight.T  # (2, 3, 6)
    target_logits[~valid] = target_logits[~valid].index_fill(-1, torch.tensor([1]), -math.inf)
    poisoned_hidden = target_hidden.masked_fill(~valid.unsqueeze(-1), math.nan)

    def run(path):
        h = hidden.clone().requires_grad_()
        if path == "kd":
            loss = KDLoss(name, temperature=1.0, kd_weight=1.0, **options)(h @ weight.T, target_logits, labels)
        elif path == "valid_only":
            loss = KDLoss(name, temperature=1.0, kd_weight=1.0, **options)((h @ weight.T)[valid], target_logits[valid])
        elif path == "lm":
            loss = LMDistillLoss(name, **options)(DenseLogits(h @ weight.T), DenseLogits(target_logits), labels,
                                                  num_items_in_batch=3).loss
        else:
            loss = LMDistillLoss(name, chunk_size=2, **options)(
                HiddenStates(h, weight), HiddenStates(poisoned_hidden, target_weight), labels, num_items_in_batch=3).loss
        (grad,) = torch.autograd.grad(loss, h)
        return loss.detach(), grad

    reference_loss, reference_grad = run("valid_only")
    if name == "reverse_kl":  # the case of the report: +inf at the masked positions
        with torch.no_grad():
            assert bool(torch.isinf(getattr(__import__("divreg").divergences, name)(
                hidden @ weight.T, target_logits)[~valid]).all())
    for path in ("kd", "lm", "fused"):
        loss, grad = run(path)
        assert bool(torch.isfinite(loss)) and bool(torch.isfinite(grad).all()), path
        assert torch.allclose(loss, reference_loss, rtol=1e-10, atol=1e-12), path
        assert torch.allclose(grad, reference_grad, rtol=1e-9, atol=1e-12), path


@pytest.mark.parametrize("path", ["lm", "kd"])
def test_another_vocabulary_size_is_a_value_error_naming_both_sizes(path):
    """The contract: teacher logits of another vocabulary size raise the divergence's ValueError
    (it names V=41 and V=46), not a bare RuntimeError from replacing the masked positions."""
    from divreg.losses import LMDistillLoss
    from divreg.targets import DenseLogits

    labels = torch.tensor([[1, 2, -100]])
    with pytest.raises(ValueError, match="vocabulary-size mismatch: logits have V=41 but target_logits have V=46"):
        if path == "lm":
            LMDistillLoss("forward_kl")(DenseLogits(torch.randn(1, 3, 41)), DenseLogits(torch.randn(1, 3, 46)), labels)
        else:
            KDLoss("forward_kl")(torch.randn(1, 3, 41), torch.randn(1, 3, 46), labels)
