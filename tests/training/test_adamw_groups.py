"""divreg.training.adamw: decoupled weight decay on the matrices only, checked against
torch.optim.AdamW applied by hand to each group."""

import pytest
import torch

from divreg.training import adamw


def test_matrices_decay_and_vectors_do_not():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    optimizer = adamw(0.1, weight_decay=0.5)(model.parameters())
    by_hand = torch.optim.AdamW([{"params": [p for p in reference if p.ndim >= 2], "weight_decay": 0.5},
                                 {"params": [p for p in reference if p.ndim < 2], "weight_decay": 0.0}], lr=0.1)
    for _ in range(3):
        for params in (list(model.parameters()), reference):
            for p in params:
                p.grad = torch.ones_like(p)
        optimizer.step()
        by_hand.step()
    for got, expected in zip(model.parameters(), reference):
        assert torch.equal(got, expected)
    # with zero gradients, a matrix shrinks by (1 - lr * wd) per step and a vector does not move
    weight, bias = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    optimizer = adamw(0.1, weight_decay=0.5)([model[1].weight, model[1].bias])
    model[1].weight.grad, model[1].bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
    optimizer.step()
    torch.testing.assert_close(model[1].weight.detach(), weight * (1 - 0.1 * 0.5), rtol=0, atol=1e-7)
    assert torch.equal(model[1].bias.detach(), bias)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        adamw(0.1, -1.0)
