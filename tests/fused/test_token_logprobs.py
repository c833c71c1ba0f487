"""fused_linear_token_logprobs against log_softmax + gather (and the entropy from the full
softmax) in float64: values and gradients for hidden, weight and bias, with temperature,
ignored positions, chunking, banned tokens, and clear errors for bad input; the dense form
token_logprobs (from logits) against the fused one."""

import math

import pytest
import torch

from divreg.fused import fused_linear_token_logprobs, token_logprobs


def _reference(hidden, weight, bias, ids, temperature, ignore_index=-100):
    logits = hidden @ weight.T + (0 if bias is None else bias)
    log_probs = torch.log_softmax(logits / temperature, -1)
    valid = ids != ignore_index
    picked = log_probs.gather(-1, ids.clamp(min=0)[..., None]).squeeze(-1)
    probs = log_probs.exp()
    entropy = -torch.where(probs > 0, probs * log_probs, 0.0).sum(-1)
    return torch.where(valid, picked, 0.0), torch.where(valid, entropy, 0.0)


def _inputs(seed, shape=(3, 7), hidden_size=6, vocab=11, with_bias=True):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, hidden_size, generator=generator, dtype=torch.float64).requires_grad_()
    weight = torch.randn(vocab, hidden_size, generator=generator, dtype=torch.float64).requires_grad_()
    bias = torch.randn(vocab, generator=generator, dtype=torch.float64).requires_grad_() if with_bias else None
    ids = torch.randint(0, vocab, shape, generator=generator)
    return hidden, weight, bias, ids


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradients_match_log_softmax_gather(temperature, chunk_size, with_bias):
    hidden, weight, bias, ids = _inputs(0, with_bias=with_bias)
    ids[0, :2] = -100  # ignored positions (e.g. padding after EOS)
    ids[2, 6] = -100
    generator = torch.Generator().manual_seed(1)
    upstream_lp = torch.randn(ids.shape, generator=generator, dtype=torch.float64)
    upstream_h = torch.randn(ids.shape, generator=generator, dtype=torch.float64)
    params = [hidden, weight] + ([bias] if with_bias else [])

    expected_lp, expected_h = _reference(hidden, weight, bias, ids, temperature)
    expected_grads = torch.autograd.grad((expected_lp * upstream_lp + expected_h * upstream_h).sum(), params,
                                         retain_graph=True)
    got = fused_linear_token_logprobs(hidden, weight, ids, temperature=temperature, bias=bias, chunk_size=chunk_size,
                                      return_entropy=True)
    got_grads = torch.autograd.grad((got.logprobs * upstream_lp + got.entropy * upstream_h).sum(), params)
    torch.testing.assert_close(got.logprobs, expected_lp.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.entropy, expected_h.detach(), rtol=1e-12, atol=1e-12)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert got.logprobs[0, :2].eq(0).all() and got_grads[0][0, :2].eq(0).all()  # ignored: 0, no gradient

    # log-probs only (no entropy): the same values and gradients
    lp_only = fused_linear_token_logprobs(hidden, weight, ids, temperature=temperature, bias=bias, chunk_size=chunk_size)
    lp_grads = torch.autograd.grad((lp_only * upstream_lp).sum(), params)
    expected_lp_grads = torch.autograd.grad((expected_lp * upstream_lp).sum(), params)
    for g, e in zip(lp_grads, expected_lp_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_gradcheck_in_float64():
    hidden, weight, bias, ids = _inputs(2, shape=(5,), hidden_size=3, vocab=4)

    def function(h, w, b):
        out = fused_linear_token_logprobs(h, w, ids, bias=b, temperature=1.3, chunk_size=2, return_entropy=True)
        return out.logprobs, out.entropy

    assert torch.autograd.gradcheck(function, (hidden, weight, bias), eps=1e-6, atol=1e-8)


def test_banned_tokens_have_minus_inf_logprob_and_no_nan():
    hidden, weight, _, ids = _inputs(3)
    bias = torch.zeros(11, dtype=torch.float64)
    bias[4] = -math.inf
    ids[0, 0] = 4
    out = fused_linear_token_logprobs(hidden, weight, ids, bias=bias, return_entropy=True)
    expected_lp, expected_h = _reference(hidden, weight, bias, ids, 1.0)
    assert out.logprobs[0, 0] == -math.inf
    finite = torch.isfinite(expected_lp)
    torch.testing.assert_close(out.logprobs[finite], expected_lp[finite].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.entropy, expected_h.detach(), rtol=1e-12, atol=1e-12)
    (grad_hidden,) = torch.autograd.grad((out.logprobs[finite].sum() + out.entropy.sum()), hidden)
    assert torch.isfinite(grad_hidden).all()


def test_float32_inputs_give_float32_results_close_to_float64():
    hidden, weight, bias, ids = _inputs(4, vocab=300)
    out32 = fused_linear_token_logprobs(hidden.detach().float(), weight.detach().float(), ids,
                                        bias=bias.detach().float())
    expected, _ = _reference(hidden, weight, bias, ids, 1.0)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change,message", [
    (lambda h, w, ids: (h, w, ids[:, :3]), "token_ids must have shape"),
    (lambda h, w, ids: (h, w, ids.double()), "token_ids must be an integer tensor"),
    (lambda h, w, ids: (h, w, ids + 100), r"token_ids must be in \[0, 11\)"),
    (lambda h, w, ids: (h, w.float(), ids), "hidden is torch.float64 but weight is torch.float32"),
    (lambda h, w, ids: (h, w[:, :4], ids), "weight has 4 columns, expected 6"),
])
def test_bad_input_is_a_clear_error(change, message):
    hidden, weight, _, ids = _inputs(5)
    with pytest.raises(ValueError, match=message):
        fused_linear_token_logprobs(*change(hidden, weight, ids))
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        fused_linear_token_logprobs(hidden, weight, ids, temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_dense_form_from_logits_matches_the_fused_form(temperature):
    """token_logprobs(h W^T + b) = fused_linear_token_logprobs(h, W, b): values and the gradients
    reaching hidden, weight and bias, with ignored positions and a banned (-inf) token; where a
    banned token is never picked, both equal log_softmax over the vocabulary without its column."""
    hidden, weight, bias, ids = _inputs(6)
    ids[1, :3] = -100
    banned = torch.zeros(11, dtype=torch.float64)
    banned[4] = -math.inf
    ids[ids == 4] = 5
    generator = torch.Generator().manual_seed(7)
    upstream_lp = torch.randn(ids.shape, generator=generator, dtype=torch.float64)
    upstream_h = torch.randn(ids.shape, generator=generator, dtype=torch.float64)
    params = [hidden, weight, bias]
    dense = token_logprobs(hidden @ weight.T + bias + banned, ids, temperature=temperature, return_entropy=True)
    fused = fused_linear_token_logprobs(hidden, weight, ids, temperature=temperature, bias=bias + banned,
                                        chunk_size=5, return_entropy=True)
    dense_grads = torch.autograd.grad((dense.logprobs * upstream_lp + dense.entropy * upstream_h).sum(), params)
    fused_grads = torch.autograd.grad((fused.logprobs * upstream_lp + fused.entropy * upstream_h).sum(), params)
    torch.testing.assert_close(dense.logprobs, fused.logprobs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense.entropy, fused.entropy, rtol=1e-12, atol=1e-12)
    for d, f in zip(dense_grads, fused_grads):
        torch.testing.assert_close(d, f, rtol=1e-10, atol=1e-12)
    # the banned column removed: the same numbers, and the banned row of W gets no gradient
    keep = [v for v in range(11) if v != 4]
    remap = torch.tensor([keep.index(v) if v in keep else 0 for v in range(11)])
    ids_without = torch.where(ids == -100, ids, remap[ids.clamp(min=0)])
    reduced = [p.detach().clone().requires_grad_() for p in (hidden, weight[keep], bias[keep])]
    expected_lp, expected_h = _reference(*reduced, ids_without, temperature)
    expected_grads = torch.autograd.grad((expected_lp * upstream_lp + expected_h * upstream_h).sum(), reduced)
    torch.testing.assert_close(dense.logprobs, expected_lp.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense.entropy, expected_h.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_grads[0], expected_grads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused_grads[1][keep], expected_grads[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused_grads[2][keep], expected_grads[2], rtol=1e-10, atol=1e-12)
    assert fused_grads[1][4].eq(0).all() and fused_grads[2][4] == 0
    assert dense.logprobs[1, :3].eq(0).all() and dense.entropy[1, :3].eq(0).all()
    assert isinstance(token_logprobs(hidden @ weight.T, ids), torch.Tensor)


def test_dense_form_bad_input_is_a_clear_error():
    logits, ids = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    with pytest.raises(ValueError, match="token_ids must have shape"):
        token_logprobs(logits, ids[:, :3])
    with pytest.raises(ValueError, match=r"token_ids must be in \[0, 11\)"):
        token_logprobs(logits, ids + 11)
    with pytest.raises(ValueError, match="integer tensor"):
        token_logprobs(logits, ids.float())
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        token_logprobs(logits, ids, temperature=-1.0)
    logits[0, 0] = -math.inf
    with pytest.raises(ValueError, match="every entry is -inf"):
        token_logprobs(logits, ids)
    ids[0, 0] = -100  # an all -inf row at an ignored position is never normalized
    assert torch.isfinite(token_logprobs(logits, ids, return_entropy=True).entropy).all()
