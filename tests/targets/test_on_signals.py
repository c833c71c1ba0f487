"""The functions that dispatch on a signal's type: the one fused rule; per-token log-probs and the
exact divergence (reduced, with per-token weights) are the same from dense logits and from
hidden states + output layer, values and gradients, in float64."""

import pytest
import torch

from divreg.reductions import sum_over_items
from divreg.targets import DenseLogits, HiddenStates, gives_hidden_states, sampled_token_logprobs, signal_divergence


def test_the_one_fused_rule():
    assert not gives_hidden_states("auto", 4095) and gives_hidden_states("auto", 4096)
    assert gives_hidden_states(True, 10) and gives_hidden_states("true", 10) and not gives_hidden_states("false", 10 ** 6)
    with pytest.raises(ValueError, match="fused must be one of"):
        gives_hidden_states("sometimes", 10)


def _pair(seed):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 6, generator=generator, dtype=torch.float64)
    return hidden, weight


def test_dense_and_hidden_signals_agree_in_values_and_gradients():
    hidden, weight = _pair(0)
    target_hidden, target_weight = _pair(1)
    tokens = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, -100]])
    mask = tokens != -100
    token_weights = torch.rand(2, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for kind in ("dense", "hidden"):
        h = hidden.detach().clone().requires_grad_()
        signal = DenseLogits(h @ weight.T) if kind == "dense" else HiddenStates(h, weight)
        target = DenseLogits(target_hidden.detach() @ target_weight.T) if kind == "dense" else HiddenStates(
            target_hidden.detach(), target_weight)
        scored = sampled_token_logprobs(signal, tokens, temperature=0.7)
        kl = signal_divergence(signal, target, mask, divergence="reverse_kl", temperature=0.7,
                               token_weights=token_weights, reduction=sum_over_items, num_items_in_batch=7)
        total = kl + scored.logprobs.sum()
        results.append((scored.logprobs.detach(), scored.entropy.detach(), kl.detach(),
                        torch.autograd.grad(total, h)[0]))
    for dense, hidden_path in zip(*results):
        torch.testing.assert_close(hidden_path, dense, rtol=1e-9, atol=1e-12)
    assert float(results[0][2]) > 0
    with pytest.raises(ValueError, match="two DenseLogits or two HiddenStates"):
        signal_divergence(DenseLogits(hidden @ weight.T), HiddenStates(hidden, weight), mask)
