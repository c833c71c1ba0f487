"""The fused, chunked divergence against the plain path (full logits + divergences.* +
autograd) in float64: values and gradients of hidden, weight and bias, for every divergence,
several chunk sizes (including ones that do not divide N), temperatures 1 and 2, ignored tokens,
token weights, Hs != Ht, the teacher vocabulary slice, the CE term and the reductions."""

import math

import pytest
import torch
import torch.nn.functional as F

from divreg.divergences import get_divergence, reverse_kl
from divreg.fused import FusedLinearDivergence, fused_linear_divergence

from ..divergences.cases import SPECS

N, HS, HT, V = 64, 32, 24, 1000
CHUNK_SIZES = [1, 7, 64, 100, None]
SPEC_IDS = [spec[0] for spec in SPECS]


def _inputs(seed=0, dtype=torch.float64, n=N, vocab=V, target_vocab=V, hs=HS, ht=HT, scale=1.0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    hidden = randn(n, hs).requires_grad_()
    weight = (scale * randn(vocab, hs) / math.sqrt(hs)).requires_grad_()
    bias = (0.5 * randn(vocab)).requires_grad_()
    target_hidden, target_weight, target_bias = randn(n, ht), scale * randn(target_vocab, ht) / math.sqrt(ht), randn(target_vocab)
    labels = torch.randint(0, vocab, (n,), generator=generator)
    labels[torch.rand(n, generator=generator) < 0.25] = -100
    token_weights = torch.rand(n, generator=generator, dtype=dtype) * 2 - 0.5  # includes negatives (advantages)
    return hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights


def _plain(hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights, *, name,
           options, temperature, ce_weight=0.0, divergence_weight=1.0, reduction="mean", num_items=None):
    logits = hidden @ weight.T + (0 if bias is None else bias)  # (N, V)
    target_logits = (target_hidden @ target_weight.T + (0 if target_bias is None else target_bias))[:, : weight.shape[0]]
    values = get_divergence(name).on_logits(logits, target_logits, temperature=temperature, **options)  # (N,)
    mask = torch.ones_like(values, dtype=torch.bool) if labels is None else labels != -100
    if token_weights is not None:
        values = values * token_weights
    total = divergence_weight * values[mask].sum()
    if ce_weight:
        total = total + ce_weight * F.cross_entropy(logits[mask], labels[mask], reduction="sum")
    if reduction == "mean":
        return total / max(int(mask.sum()), 1)
    return total if num_items is None else total / num_items


def _compare(fused_loss, plain_loss, leaves, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(fused_loss, plain_loss, rtol=rtol, atol=atol)
    fused_grads = torch.autograd.grad(fused_loss, leaves)
    plain_grads = torch.autograd.grad(plain_loss, leaves, retain_graph=True)
    for fused_grad, plain_grad in zip(fused_grads, plain_grads):
        torch.testing.assert_close(fused_grad, plain_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("case_id,name,options,reference", SPECS, ids=SPEC_IDS)
def test_every_divergence_matches_plain_path(case_id, name, options, reference, temperature):
    hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights = _inputs(seed=len(case_id))
    plain = _plain(hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights,
                   name=name, options=options, temperature=temperature)
    for chunk_size in CHUNK_SIZES:
        fused = fused_linear_divergence(
            hidden, weight, target_hidden, target_weight, bias=bias, target_bias=target_bias, labels=labels,
            token_weights=token_weights, divergence=name, temperature=temperature, chunk_size=chunk_size, **options)
        _compare(fused, plain, (hidden, weight, bias))


@pytest.mark.parametrize("chunk_size", [5, None])
def test_without_labels_bias_or_token_weights(chunk_size):
    hidden, weight, _, target_hidden, target_weight, _, _, _ = _inputs(seed=1)
    plain = _plain(hidden, weight, None, target_hidden, target_weight, None, None, None,
                   name="reverse_kl", options={}, temperature=1.0)
    fused = fused_linear_divergence(hidden, weight, target_hidden, target_weight, divergence="reverse_kl",
                                    chunk_size=chunk_size)
    _compare(fused, plain, (hidden, weight))


def test_leading_dims_are_flattened():
    hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights = _inputs(seed=2)
    shape = (4, 16)
    fused = fused_linear_divergence(hidden.reshape(*shape, HS), weight, target_hidden.reshape(*shape, HT),
                                    target_weight, labels=labels.reshape(shape), bias=bias, chunk_size=9)
    plain = _plain(hidden, weight, bias, target_hidden, target_weight, None, labels, None,
                   name="forward_kl", options={}, temperature=1.0)
    _compare(fused, plain, (hidden, weight, bias))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_cross_entropy_term(temperature):
    hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights = _inputs(seed=3)
    kwargs = dict(ce_weight=0.3, divergence_weight=0.7)
    plain = _plain(hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights,
                   name="generalized_jsd", options={"beta": 0.5}, temperature=temperature, **kwargs)
    fused = fused_linear_divergence(hidden, weight, target_hidden, target_weight, bias=bias, target_bias=target_bias,
                                    labels=labels, token_weights=token_weights, divergence="generalized_jsd",
                                    beta=0.5, temperature=temperature, chunk_size=10, **kwargs)
    _compare(fused, plain, (hidden, weight, bias))


def test_parts_are_reported():
    hidden, weight, bias, target_hidden, target_weight, _, labels, _ = _inputs(seed=4)
    out = fused_linear_divergence(hidden, weight, target_hidden, target_weight, labels=labels, ce_weight=0.5,
                                  divergence_weight=2.0, return_parts=True, chunk_size=11)
    mask = labels != -100
    logits = hidden @ weight.T
    expected_kl = get_divergence("forward_kl").on_logits(logits, target_hidden @ target_weight.T)[mask].mean()
    expected_ce = F.cross_entropy(logits[mask], labels[mask])
    torch.testing.assert_close(out.divergence, expected_kl.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out.cross_entropy, expected_ce.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out.loss, 2.0 * expected_kl + 0.5 * expected_ce, rtol=1e-12, atol=0)
    assert not out.divergence.requires_grad and out.loss.requires_grad


def test_sum_over_accumulation_steps_equals_the_whole_batch():
    """Micro-batches with reduction='sum' and the global num_items_in_batch add up to the token
    mean of the whole batch: same value, same gradients (gradient accumulation)."""
    hidden, weight, bias, target_hidden, target_weight, _, labels, _ = _inputs(seed=5)
    whole = fused_linear_divergence(hidden, weight, target_hidden, target_weight, labels=labels, bias=bias)
    num_items = int((labels != -100).sum())
    parts = [fused_linear_divergence(hidden[s], weight, target_hidden[s], target_weight, labels=labels[s], bias=bias,
                                     reduction="sum", num_items_in_batch=torch.tensor(num_items), chunk_size=6)
             for s in (slice(0, 10), slice(10, 41), slice(41, N))]
    _compare(sum(parts), whole, (hidden, weight, bias))


def test_per_token_values():
    hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights = _inputs(seed=6)
    with torch.no_grad():
        values = fused_linear_divergence(hidden, weight, target_hidden, target_weight, labels=labels, bias=bias,
                                         reduction="none", divergence="total_variation", chunk_size=13)
        expected = get_divergence("total_variation").on_logits(hidden @ weight.T + bias, target_hidden @ target_weight.T)
    mask = labels != -100
    torch.testing.assert_close(values[mask], expected[mask], rtol=1e-12, atol=1e-14)
    assert (values[~mask] == 0).all()
    with pytest.raises(ValueError, match="without gradients"):
        fused_linear_divergence(hidden, weight, target_hidden, target_weight, reduction="none")


def test_teacher_vocab_slice():
    """A teacher whose embedding is padded (same tokenizer, more rows): its first V rows only."""
    hidden, weight, bias, target_hidden, target_weight, target_bias, labels, _ = _inputs(seed=7, target_vocab=V + 24)
    target_weight.data[V:] *= 50  # padded rows with large logits: using them would change everything
    plain = _plain(hidden, weight, bias, target_hidden, target_weight, target_bias, labels, None,
                   name="forward_kl", options={}, temperature=2.0)
    fused = fused_linear_divergence(hidden, weight, target_hidden, target_weight, bias=bias, target_bias=target_bias,
                                    labels=labels, temperature=2.0, target_vocab_slice=V, chunk_size=17)
    _compare(fused, plain, (hidden, weight, bias))
    with pytest.raises(ValueError, match=f"pass target_vocab_slice={V}"):
        fused_linear_divergence(hidden, weight, target_hidden, target_weight)


def test_vocab_mismatch_errors():
    hidden, weight, _, target_hidden, target_weight, _, _, _ = _inputs(seed=8, target_vocab=V - 10)
    with pytest.raises(ValueError, match="never padded"):
        fused_linear_divergence(hidden, weight, target_hidden, target_weight)
    with pytest.raises(ValueError, match="must equal the student's vocabulary"):
        fused_linear_divergence(hidden, weight, target_hidden, target_weight, target_vocab_slice=V - 10)


def test_all_tokens_ignored_gives_zero_loss_and_zero_grads():
    hidden, weight, bias, target_hidden, target_weight, _, _, _ = _inputs(seed=9)
    labels = torch.full((N,), -100)
    for reduction in ("mean", "sum"):
        loss = fused_linear_divergence(hidden, weight, target_hidden, target_weight, labels=labels, bias=bias,
                                       reduction=reduction, ce_weight=0.5)
        assert loss.item() == 0.0
        grads = torch.autograd.grad(loss, (hidden, weight, bias))
        assert all((g == 0).all() for g in grads)


def test_grad_output_scaling_and_module_wrapper():
    hidden, weight, bias, target_hidden, target_weight, _, labels, _ = _inputs(seed=10)
    module = FusedLinearDivergence("skew_kl", alpha=0.2, temperature=2.0, chunk_size=8)
    loss = 3.0 * module(hidden, weight, target_hidden, target_weight, labels, bias=bias)
    plain = 3.0 * _plain(hidden, weight, bias, target_hidden, target_weight, None, labels, None,
                         name="skew_kl", options={"alpha": 0.2}, temperature=2.0)
    _compare(loss, plain, (hidden, weight, bias))
    assert "skew_kl" in repr(module)


def test_teacher_side_gets_no_gradient():
    hidden, weight, _, target_hidden, target_weight, _, _, _ = _inputs(seed=11)
    target_weight.requires_grad_()
    loss = fused_linear_divergence(hidden, weight, target_hidden, target_weight)
    (grad,) = torch.autograd.grad(loss, (target_weight,), allow_unused=True)
    assert grad is None


def test_bad_inputs():
    hidden, weight, bias, target_hidden, target_weight, _, labels, _ = _inputs(seed=12)
    call = lambda **kw: fused_linear_divergence(  # noqa: E731
        kw.pop("hidden", hidden), kw.pop("weight", weight), kw.pop("target_hidden", target_hidden),
        target_weight, **kw)
    with pytest.raises(ValueError, match="temperature"):
        call(temperature=0.0)
    with pytest.raises(ValueError, match="unknown divergence"):
        call(divergence="kl")
    with pytest.raises(ValueError, match="beta must be"):
        call(divergence="generalized_jsd", beta=2.0)
    with pytest.raises(ValueError, match="columns"):
        call(hidden=torch.randn(N, HS + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="leading"):
        call(target_hidden=torch.randn(N + 1, HT, dtype=torch.float64))
    with pytest.raises(ValueError, match="labels must have shape"):
        call(labels=labels[:-1])
    with pytest.raises(ValueError, match="labels must be in"):
        call(labels=torch.full((N,), V))
    with pytest.raises(ValueError, match="needs labels"):
        call(ce_weight=0.5)
    with pytest.raises(ValueError, match="chunk_size"):
        call(chunk_size=0)
    with pytest.raises(ValueError, match="reduction"):
        call(reduction="median")
    with pytest.raises(ValueError, match="only applies to reduction='sum'"):
        call(num_items_in_batch=4)
    with pytest.raises(ValueError, match="num_items_in_batch must be one positive number"):
        call(reduction="sum", num_items_in_batch=0)
    with pytest.raises(ValueError, match="bias must have shape"):
        call(bias=bias[:-1])
    bad = hidden.detach().clone()
    bad[3, 4] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        call(hidden=bad)


AT_SCALE = [("forward_kl", {}), ("reverse_kl", {}), ("generalized_jsd", {"beta": 0.5}), ("skew_kl", {"alpha": 0.1}),
            ("skew_reverse_kl", {"alpha": 0.1}), ("total_variation", {}), ("alpha_divergence", {"alpha": 0.5}),
            ("topk_kl", {"k": 64})]


@pytest.mark.slow
@pytest.mark.parametrize("name,options", AT_SCALE, ids=[name for name, _ in AT_SCALE])
def test_float32_at_scale(name, options):
    """N=512, V=32000 in float32 against the float64 plain path: relative error below 1e-5 on
    the loss and 1e-4 (of the largest entry) on the gradients. Total variation's gradient
    (a sign of q - p, discontinuous at ties) is as far from float64 in the plain float32 path
    (about 1.4e-4 here): for it the bound is twice that path's own error."""
    hidden, weight, bias, target_hidden, target_weight, _, labels, _ = _inputs(
        seed=13, dtype=torch.float32, n=512, vocab=32000, target_vocab=32000, hs=64, ht=48, scale=4.0)
    fused = fused_linear_divergence(hidden, weight, target_hidden, target_weight, labels=labels, bias=bias,
                                    temperature=2.0, divergence=name, **options)
    fused_grads = torch.autograd.grad(fused, (hidden, weight, bias))
    leaves64 = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    plain = _plain(leaves64[0], leaves64[1], leaves64[2], target_hidden.double(), target_weight.double(), None,
                   labels, None, name=name, options=options, temperature=2.0)
    plain_grads = torch.autograd.grad(plain, leaves64)
    assert fused.dtype == torch.float32
    assert abs(fused.item() - plain.item()) <= 1e-5 * plain.item()
    bounds = [1e-4] * 3
    if name == "total_variation":
        plain32 = _plain(hidden, weight, bias, target_hidden, target_weight, None, labels, None, name=name,
                         options=options, temperature=2.0)
        plain32_grads = torch.autograd.grad(plain32, (hidden, weight, bias))
        bounds = [2 * float((g32.double() - g64).abs().max() / g64.abs().max())
                  for g32, g64 in zip(plain32_grads, plain_grads)]
        assert max(bounds) <= 1e-3
    for fused_grad, plain_grad, bound in zip(fused_grads, plain_grads, bounds):
        assert (fused_grad.double() - plain_grad).abs().max() <= bound * plain_grad.abs().max()


@pytest.mark.parametrize("tail", ["bucket", "renormalize", "none"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_target_matches_plain_sparse_kl(tail, temperature):
    """A cached teacher's top-k signal, fused: the same values and gradients as sparse_kl on
    the full logits."""
    from divreg.divergences import sparse_kl
    from divreg.fused import fused_linear_sparse_divergence

    hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights = _inputs(seed=14)
    log_p = torch.log_softmax((target_hidden @ target_weight.T) / temperature, -1)
    top_log_p, ids = log_p.topk(8, -1)
    tail_mass = torch.logsumexp(log_p.scatter(-1, ids, -math.inf), -1)
    mask = labels != -100
    logits = hidden @ weight.T + bias
    values = sparse_kl(logits, ids, top_log_p, tail_mass, tail=tail, temperature=temperature) * token_weights
    plain = (0.7 * values[mask].sum() + 0.3 * F.cross_entropy(logits[mask], labels[mask], reduction="sum")) / 50.0
    for chunk_size in (1, 7, None):
        fused = fused_linear_sparse_divergence(
            hidden, weight, ids, top_log_p, tail_mass, tail=tail, temperature=temperature, labels=labels, bias=bias,
            token_weights=token_weights, chunk_size=chunk_size, reduction="sum", num_items_in_batch=50,
            divergence_weight=0.7, ce_weight=0.3)
        _compare(fused, plain, (hidden, weight, bias))
    with pytest.raises(ValueError, match="token ids in"):
        fused_linear_sparse_divergence(hidden, weight, ids + V, top_log_p)


@pytest.mark.parametrize("reduction", ["sequence_mean", "mean"])
def test_fused_uses_the_reductions_of_divreg_reductions(reduction):
    """Any reduction of divreg.reductions, including the per-sequence mean, gives on the fused
    path what the reduction gives on the plain path (values and gradients, float64)."""
    from divreg.reductions import get_reduction, mask_from_labels

    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 6, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    target_hidden = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)
    target_weight = torch.randn(50, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 50, (3, 6), generator=generator)
    labels[0, 4:] = -100
    labels[2] = -100  # an empty sequence
    fused = fused_linear_divergence(hidden, weight, target_hidden, target_weight, labels=labels, chunk_size=4,
                                    reduction=get_reduction(reduction), ce_weight=0.3, divergence="reverse_kl")
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    mask = mask_from_labels(labels)
    logits = hidden @ weight.T
    divergence = get_reduction(reduction)(reverse_kl(logits, target_hidden @ target_weight.T), mask)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), reduction="none")
    plain = divergence + 0.3 * get_reduction(reduction)(ce.view(3, 6), mask)
    plain_grads = torch.autograd.grad(plain, (hidden, weight))
    assert torch.allclose(fused, plain, rtol=1e-10, atol=1e-12)
    for got, expected in zip(fused_grads, plain_grads):
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_mixed_dtypes_and_missing_options_are_clear_errors():
    """A bf16 weight with fp32 hidden states (either side), or a divergence without its required
    option, stops with a ValueError that says what to pass (no raw matmul or TypeError)."""
    hidden, weight = torch.randn(4, 8), torch.randn(20, 8)
    with pytest.raises(ValueError, match=r"hidden is torch.float32 but weight is torch.bfloat16.*hidden.to"):
        fused_linear_divergence(hidden, weight.bfloat16(), hidden, weight)
    with pytest.raises(ValueError, match=r"target_hidden is torch.bfloat16 but target_weight is torch.float32"):
        fused_linear_divergence(hidden, weight, hidden.bfloat16(), weight)
    with pytest.raises(ValueError, match=r"'alpha_divergence' needs alpha="):
        fused_linear_divergence(hidden, weight, hidden, weight, divergence="alpha_divergence")
    with pytest.raises(ValueError, match=r"'forward_kl' does not take \['beta'\]"):
        fused_linear_divergence(hidden, weight, hidden, weight, beta=0.5)
    # a low-precision teacher with a float32 student is fine: each side is consistent
    loss = fused_linear_divergence(hidden, weight, hidden.bfloat16(), weight.bfloat16())
    assert torch.isfinite(loss)
