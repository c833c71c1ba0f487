r"""Contrastive objectives for embeddings with focal weighting and mixed hard negatives
(KaLM-Embedding-V2, Zhao et al. 2025, "KaLM-Embedding-V2: Superior Training Techniques and Data
Inspire A Versatile Embedding Model", arXiv 2506.20923).

.. math::
    p_i = \frac{e^{s(q_i, d_i^+)/\tau}}{e^{s(q_i, d_i^+)/\tau} + \sum_{d \in N_i} e^{s(q_i, d)/\tau}},\qquad
    \ell_i = -(1 - p_i)^\gamma \log p_i,

s the cosine similarity, N_i the other queries' positives (in-batch negatives) and query i's hard
negatives, among them mixed ones :math:`\tilde n = \mathrm{normalize}(\lambda n_a + (1 - \lambda) n_b)`,
:math:`\lambda \sim \mathrm{Beta}(2, 2)`, from two of the query's hard negatives. The exact forms
and defaults were not available to us (the paper was not readable here): the focal form above
(gamma 0.5), the temperature 0.05, mixing pairs drawn uniformly from a query's own hard negatives,
and the mixed negatives not receiving gradient through lambda are options with these documented
defaults; gamma = 0 is plain InfoNCE.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def mix_hard_negatives(negatives: Tensor, count: int, *, generator: Optional[torch.Generator] = None,
                       concentration: float = 2.0) -> Tensor:
    """(B, count, D) unit vectors normalize(lam n_a + (1 - lam) n_b), n_a != n_b two of each
    query's hard negatives (B, H, D), lam ~ Beta(concentration, concentration).

    Example:
        >>> import torch
        >>> negatives = torch.eye(3)[None, :2]  # one query, hard negatives e1 and e2
        >>> mixed = mix_hard_negatives(negatives, 4, generator=torch.Generator().manual_seed(0))
        >>> tuple(mixed.shape), bool(torch.allclose(mixed.norm(dim=-1), torch.ones(1, 4)))  # unit vectors ...
        ((1, 4, 3), True)
        >>> bool((mixed[..., 2] == 0).all() and (mixed[..., :2] >= 0).all())  # ... between e1 and e2
        True
    """
    batch, hard, dim = negatives.shape
    if hard < 2:
        raise ValueError(f"mixing needs at least 2 hard negatives per query, got {hard}")
    first = torch.randint(0, hard, (batch, count), generator=generator, device=negatives.device)
    second = (first + torch.randint(1, hard, (batch, count), generator=generator, device=negatives.device)) % hard
    beta = torch.distributions.Beta(torch.tensor(concentration), torch.tensor(concentration))
    lam = beta.sample((batch, count, 1)).to(negatives) if generator is None else \
        _beta(concentration, (batch, count, 1), generator).to(negatives)
    pick = lambda index: negatives.gather(1, index[..., None].expand(-1, -1, dim))  # noqa: E731
    return F.normalize(lam * pick(first) + (1 - lam) * pick(second), dim=-1)


def _beta(concentration: float, shape, generator: torch.Generator) -> Tensor:
    """Beta(c, c) drawn reproducibly from ``generator`` through the public distribution API
    (torch's Beta takes no generator: its global stream is seeded from ours, then restored)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        c = torch.tensor(float(concentration))
        return torch.distributions.Beta(c, c).sample(shape)


def focal_info_nce(query: Tensor, positive: Tensor, negatives: Optional[Tensor] = None, *, temperature: float = 0.05,
                   gamma: float = 0.5, in_batch: bool = True) -> Tensor:
    """Per-query focal InfoNCE values (B,) (see the module docstring).

    Args:
        query, positive: (B, D) embeddings (normalized here).
        negatives: (B, H, D) hard negatives of each query (mixed ones appended by the caller), or None.
        in_batch: the other queries' positives are negatives too.

    Example:
        >>> import torch
        >>> query, negatives = torch.tensor([[1.0, 0.0]]), torch.tensor([[[0.0, 1.0]]])  # cosines 1 (positive), 0
        >>> round(float(focal_info_nce(query, query, negatives, temperature=1.0, gamma=0.0)), 4)  # -log(e / (e + 1))
        0.3133
        >>> round(float(focal_info_nce(query, query, negatives, temperature=1.0)), 4)  # times (1 - e / (e + 1)) ** 0.5
        0.1625
    """
    if query.shape != positive.shape or query.dim() != 2:
        raise ValueError(f"query and positive must both be (B, D), got {tuple(query.shape)}, {tuple(positive.shape)}")
    if temperature <= 0 or gamma < 0:
        raise ValueError(f"temperature must be > 0 and gamma >= 0, got {temperature}, {gamma}")
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32  # fp32 math, fp64 kept
    q, d = F.normalize(query.to(dtype), dim=-1), F.normalize(positive.to(dtype), dim=-1)
    columns = [(q * d).sum(-1, keepdim=True)]  # (B, 1): the positive first
    if in_batch:
        others = q @ d.T  # (B, B)
        columns.append(others.masked_fill(torch.eye(len(q), dtype=torch.bool, device=q.device), float("-inf")))
    if negatives is not None:
        if negatives.dim() != 3 or negatives.shape[0] != len(q) or negatives.shape[2] != q.shape[1]:
            raise ValueError(f"negatives must be (B, H, D) = ({len(q)}, H, {q.shape[1]}), got {tuple(negatives.shape)}")
        columns.append(torch.einsum("bd,bhd->bh", q, F.normalize(negatives.to(dtype), dim=-1)))
    log_p = F.log_softmax(torch.cat(columns, dim=1) / temperature, dim=1)[:, 0]  # (B,)
    return -(1 - log_p.exp()).pow(gamma) * log_p
