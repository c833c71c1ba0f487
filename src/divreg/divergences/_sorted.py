"""Distance between distributions over different vocabularies: sorted probabilities (ULD)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._common import check_finite_logits, check_temperature, log_softmax_checked, math_dtype


def sorted_probability_l1(logits: Tensor, target_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""L1 distance between the two distributions' probability vectors sorted in decreasing
    order, the shorter one zero-padded: the closed form of ULD's Wasserstein-1 distance, which
    needs no token correspondence, so the vocabularies may differ.

    .. math:: \sum_i \big|\, p_{(i)} - q_{(i)} \big|,\qquad p_{(1)} \ge p_{(2)} \ge \dots

    Its limit: sorting forgets which token carries which probability, so it matches the
    *shape* of the teacher's distribution (its confidence profile), not its content; two
    distributions that are permutations of each other are at distance 0.

    Args:
        logits: (..., V_s) the model being trained.
        target_logits: (..., V_t) the target; same leading dims, any V_t.
        temperature: T > 0, divides both.

    Returns:
        Tensor of shape ``logits.shape[:-1]``, in [0, 2].

    References:
        Boizard et al. "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation
        Loss for LLMs", 2024, arXiv 2402.12030.

    Example:
        >>> import torch
        >>> # a permutation of the same probabilities is at distance 0
        >>> round(float(sorted_probability_l1(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 1.0, 2.0]))), 4)
        0.0
        >>> # vocabularies of 3 and 2 tokens: sorted (1/2, 1/4, 1/4) against (1/2, 1/2, 0)
        >>> float(sorted_probability_l1(torch.tensor([0.5, 0.25, 0.25]).log(), torch.zeros(2)))
        0.5
    """
    check_temperature(temperature)
    if logits.shape[:-1] != target_logits.shape[:-1]:
        raise ValueError(f"leading dims differ: logits {tuple(logits.shape)} vs target_logits {tuple(target_logits.shape)}")
    check_finite_logits("logits", logits)
    check_finite_logits("target_logits", target_logits)
    dtype = math_dtype(logits, target_logits)
    q = log_softmax_checked("logits", logits, temperature, dtype).exp().sort(-1, descending=True).values
    p = log_softmax_checked("target_logits", target_logits, temperature, dtype).exp().sort(-1, descending=True).values
    size = max(q.shape[-1], p.shape[-1])
    q, p = F.pad(q, (0, size - q.shape[-1])), F.pad(p, (0, size - p.shape[-1]))
    return (q - p).abs().sum(-1)
