"""One pass with a target: fused_linear_token_logprobs(..., target_hidden, target_weight) gives the
log-probs, the entropy, the exact reverse KL to the target and the target's log-probs, against
the full softmaxes in float64 (values; gradients of every output combination, through gradcheck
and against autograd of the dense form), with temperature, ignored positions, chunking, an
output head on either side, banned tokens, and clear errors."""

import pytest
import torch

from divreg.fused import TokenStatistics, fused_linear_token_logprobs


def _dense(hidden, weight, bias, target, ids, temperature, head=None, target_head=None):
    """The four per-token values from the full softmaxes (0 at ignored positions)."""
    def log_softmax(h, w, b, transform):
        z = h @ w.T + (0 if b is None else b)
        if transform is not None:
            z = transform(z)
        return torch.log_softmax(z / temperature, -1)

    log_p = log_softmax(hidden, weight, bias, head)
    log_q = log_softmax(*target, target_head)
    valid = ids != -100
    p = log_p.exp()
    picked = log_p.gather(-1, ids.clamp(min=0)[..., None]).squeeze(-1)
    entropy = -torch.where(p > 0, p * log_p, 0.0).sum(-1)
    kl = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
    target_picked = log_q.gather(-1, ids.clamp(min=0)[..., None]).squeeze(-1)
    return [torch.where(valid, v, 0.0) for v in (picked, entropy, kl, target_picked)]


def _inputs(seed, shape=(3, 7), hidden_size=6, target_size=5, vocab=11):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, hidden_size, generator=generator, dtype=torch.float64).requires_grad_()
    weight = torch.randn(vocab, hidden_size, generator=generator, dtype=torch.float64).requires_grad_()
    bias = torch.randn(vocab, generator=generator, dtype=torch.float64).requires_grad_()
    target = (torch.randn(*shape, target_size, generator=generator, dtype=torch.float64),
              torch.randn(vocab, target_size, generator=generator, dtype=torch.float64),
              torch.randn(vocab, generator=generator, dtype=torch.float64))
    ids = torch.randint(0, vocab, shape, generator=generator)
    ids[0, -2:] = -100  # ignored positions
    return hidden, weight, bias, target, ids


@pytest.mark.parametrize("temperature,chunk", [(1.0, None), (0.7, 4), (2.0, 1)])
def test_values_and_gradients_match_the_full_softmaxes(temperature, chunk):
    hidden, weight, bias, target, ids = _inputs(0)
    out = fused_linear_token_logprobs(hidden, weight, ids, bias=bias, temperature=temperature, chunk_size=chunk,
                                      target_hidden=target[0], target_weight=target[1], target_bias=target[2])
    assert isinstance(out, TokenStatistics)
    expected = _dense(hidden, weight, bias, target, ids, temperature)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert bool((out.kl[ids != -100] > 0).all()) and bool((out.kl[ids == -100] == 0).all())
    assert not out.target_logprobs.requires_grad
    generator = torch.Generator().manual_seed(1)
    g = [torch.randn(ids.shape, generator=generator, dtype=torch.float64) for _ in range(3)]
    grads = torch.autograd.grad(sum((v * w).sum() for v, w in zip(out[:3], g)), (hidden, weight, bias))
    want = torch.autograd.grad(sum((v * w).sum() for v, w in zip(expected[:3], g)), (hidden, weight, bias))
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("outputs", [(2,), (0, 2), (1, 2), (0, 1, 2)])
def test_gradcheck_of_the_kl_alone_and_with_the_others(outputs):
    hidden, weight, bias, target, ids = _inputs(2, shape=(2, 3), hidden_size=3, target_size=4, vocab=5)

    def f(h, w, b):
        out = fused_linear_token_logprobs(h, w, ids, bias=b, temperature=0.9, chunk_size=2, target_hidden=target[0],
                                          target_weight=target[1], target_bias=target[2])
        return tuple(out[i] for i in outputs)

    assert torch.autograd.gradcheck(f, (hidden, weight, bias), eps=1e-6, atol=1e-8)


def test_output_heads_on_both_sides():
    hidden, weight, bias, target, ids = _inputs(3)
    out = fused_linear_token_logprobs(hidden, weight, ids, bias=bias, softcap=2.0, logit_scale=0.5,
                                      target_hidden=target[0], target_weight=target[1], target_bias=target[2],
                                      target_logit_scale=3.0)
    expected = _dense(hidden, weight, bias, target, ids, 1.0, head=lambda z: 2.0 * torch.tanh(0.5 * z / 2.0),
                      target_head=lambda z: 3.0 * z)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.autograd.grad(out.kl.sum(), hidden)  # differentiable through the head


def test_a_token_banned_by_both_is_ignored_and_one_banned_by_the_target_alone_gives_an_infinite_kl():
    hidden, weight, bias, target, ids = _inputs(4)
    ids = ids.clamp(min=0) % 9  # never the banned tokens 9 and 10
    both, only_target = bias.detach().clone(), target[2].clone()
    both[9] = float("-inf")
    only_target[9] = float("-inf")
    out = fused_linear_token_logprobs(hidden, weight, ids, bias=both, target_hidden=target[0], target_weight=target[1],
                                      target_bias=only_target)
    assert bool(torch.isfinite(out.kl).all())  # token 9: p = q = 0
    (grad,) = torch.autograd.grad(out.kl.sum(), hidden)
    assert bool(torch.isfinite(grad).all())
    torch.testing.assert_close(out.kl, _dense(hidden, weight, both, (target[0], target[1], only_target), ids, 1.0)[2],
                               rtol=1e-10, atol=1e-12)
    only_target[10] = float("-inf")  # token 10 is possible under the model, impossible under the target
    out = fused_linear_token_logprobs(hidden, weight, ids, bias=both, target_hidden=target[0], target_weight=target[1],
                                      target_bias=only_target)
    assert bool(torch.isinf(out.kl).all())


def test_the_same_log_probs_and_entropy_as_without_a_target():
    hidden, weight, bias, target, ids = _inputs(5)
    alone = fused_linear_token_logprobs(hidden, weight, ids, bias=bias, return_entropy=True)
    out = fused_linear_token_logprobs(hidden, weight, ids, bias=bias, target_hidden=target[0], target_weight=target[1])
    torch.testing.assert_close(out.logprobs, alone.logprobs, rtol=0, atol=0)
    torch.testing.assert_close(out.entropy, alone.entropy, rtol=0, atol=0)


def test_clear_errors():
    hidden, weight, bias, target, ids = _inputs(6)
    with pytest.raises(ValueError, match="both target_hidden and target_weight"):
        fused_linear_token_logprobs(hidden, weight, ids, target_hidden=target[0])
    with pytest.raises(ValueError, match="same positions over the same vocabulary"):
        fused_linear_token_logprobs(hidden, weight, ids, target_hidden=target[0][:, :3], target_weight=target[1])
    with pytest.raises(ValueError, match="same positions over the same vocabulary"):
        fused_linear_token_logprobs(hidden, weight, ids, target_hidden=target[0], target_weight=target[1][:7])
