"""Output heads that transform z = h W^T + b (a logit scale, Gemma's final-logit softcapping) in
the fused kernels: values and gradients equal to the plain path on the transformed logits, in
float64."""

import pytest
import torch

from divreg.divergences import generalized_jsd, sparse_kl
from divreg.fused import fused_linear_divergence, fused_linear_sparse_divergence, fused_linear_token_logprobs

HEADS = [(None, 2.0), (0.5, None), (1.5, 3.0)]  # (logit_scale, softcap)


def _head(z, scale, cap):
    z = z if scale is None else z * scale
    return z if cap is None else cap * torch.tanh(z / cap)


def _inputs():
    g = torch.Generator().manual_seed(0)
    d = torch.float64
    h, w, b = (torch.randn(*shape, generator=g, dtype=d, requires_grad=True) for shape in ((7, 5), (11, 5), (11,)))
    ht, wt = torch.randn(7, 3, generator=g, dtype=d), torch.randn(11, 3, generator=g, dtype=d)
    return h, w, b, ht, wt, torch.tensor([1, 2, -100, 4, 5, 6, 0])


@pytest.mark.parametrize("student", HEADS)
@pytest.mark.parametrize("teacher", [(None, None), (2.0, None), (None, 1.0)])
def test_fused_divergence_on_transformed_heads_equals_the_plain_path(student, teacher):
    h, w, b, ht, wt, labels = _inputs()
    fused = fused_linear_divergence(h, w, ht, wt, labels=labels, bias=b, chunk_size=3, divergence="generalized_jsd",
                                    beta=0.3, temperature=1.7, ce_weight=0.4, logit_scale=student[0],
                                    softcap=student[1], target_logit_scale=teacher[0], target_softcap=teacher[1])
    mask = labels != -100
    z, zt = _head(h @ w.T + b, *student), _head(ht @ wt.T, *teacher)
    plain = (generalized_jsd(z, zt, beta=0.3, temperature=1.7)[mask]
             + 0.4 * torch.nn.functional.cross_entropy(z[mask], labels[mask], reduction="none")).mean()
    assert torch.allclose(fused, plain, rtol=1e-12, atol=1e-14)
    for got, expected in zip(torch.autograd.grad(fused, (h, w, b)), torch.autograd.grad(plain, (h, w, b))):
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("student", HEADS)
def test_fused_sparse_divergence_on_a_transformed_head(student):
    h, w, b, ht, wt, labels = _inputs()
    top = (ht @ wt.T).log_softmax(-1).topk(4)
    fused = fused_linear_sparse_divergence(h, w, top.indices, top.values, labels=labels, bias=b, chunk_size=2,
                                           logit_scale=student[0], softcap=student[1])
    plain = sparse_kl(_head(h @ w.T + b, *student), top.indices, top.values)[labels != -100].mean()
    assert torch.allclose(fused, plain, rtol=1e-12)
    for got, expected in zip(torch.autograd.grad(fused, (h, w, b)), torch.autograd.grad(plain, (h, w, b))):
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("head", HEADS)
def test_fused_token_logprobs_and_entropy_on_a_transformed_head(head):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[1, 2, 3, -100, 4], [5, 6, 7, 8, 9]])
    gl, ge = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    out = fused_linear_token_logprobs(h, w, ids, bias=b, temperature=1.3, chunk_size=3, return_entropy=True,
                                      logit_scale=head[0], softcap=head[1])
    log_probs = (_head(h @ w.T + b, *head) / 1.3).log_softmax(-1)
    valid = ids != -100
    picked = torch.where(valid, log_probs.gather(-1, ids.clamp(min=0)[..., None]).squeeze(-1), 0.0)
    entropy = torch.where(valid, -(log_probs.exp() * log_probs).sum(-1), 0.0)
    assert torch.allclose(out.logprobs, picked, atol=1e-12) and torch.allclose(out.entropy, entropy, atol=1e-12)
    fused_grads = torch.autograd.grad((out.logprobs * gl).sum() + (out.entropy * ge).sum(), (h, w, b))
    plain_grads = torch.autograd.grad((picked * gl).sum() + (entropy * ge).sum(), (h, w, b))
    for got, expected in zip(fused_grads, plain_grads):
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [{"softcap": 0.0}, {"logit_scale": -1.0}, {"softcap": float("inf")}])
def test_a_bad_head_is_one_line(bad):
    h, w, b, ht, wt, labels = _inputs()
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a finite number > 0"):
        fused_linear_token_logprobs(h, w, labels.clamp(min=0), **bad)
