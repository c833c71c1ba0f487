r"""An ensemble of causal LMs as one teacher: the members' logits averaged, as "Pre-training under
infinite compute" combines its members (Kim, Kotha, Liang and Hashimoto, 2025, arXiv 2509.14786;
official code github.com/marin-community/marin, ``experiments/data_efficiency``, with levanter's
``EnsembleModel``: the mean of the members' logits, the paper's "LogitAvg"):

.. math::
    \bar z = \frac{1}{K}\sum_{k=1}^K z_k, \qquad p_{ens} = \mathrm{softmax}(\bar z)

(``combine="probabilities"``: the mixture :math:`\frac1K\sum_k \mathrm{softmax}(z_k)`, returned as
its log, which is a valid logit vector; the paper's code offers it as an option, its results use
logit averaging). An ensemble has no single final hidden state, so it gives dense logits only:
the fused hidden-state path is not available for it as a teacher.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

COMBINE = ("logits", "probabilities")


class LogitEnsemble(nn.Module):
    """K :class:`~divreg.models.CausalLM` members with one vocabulary; ``forward`` returns the
    combined logits (B, T, V).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from divreg.models import CausalLM
        >>> config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                      num_attention_heads=2)
        >>> members = [CausalLM(LlamaForCausalLM(config)) for _ in range(2)]
        >>> ensemble = LogitEnsemble(members)
        >>> ids = torch.randint(0, 32, (1, 5))
        >>> mask = torch.ones_like(ids)
        >>> expected = (members[0](ids, mask) + members[1](ids, mask)) / 2
        >>> bool(torch.allclose(ensemble(ids, mask), expected))
        True
    """

    supports_hidden = False

    def __init__(self, members: Sequence[nn.Module], combine: str = "logits"):
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        sizes = {getattr(m, "vocab_size", None) for m in members}
        if len(sizes) != 1:
            raise ValueError(f"the ensemble's members predict over different vocabularies ({sorted(map(str, sizes))}): "
                             "give members that share one tokenizer")
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.vocab_size = sizes.pop()

    def forward(self, input_ids: Tensor, attention_mask: Tensor, hidden: bool = False) -> Tensor:
        if hidden:
            raise ValueError("an ensemble teacher has no single hidden state for the fused path: its logits are "
                             "averaged (set fused=false)")
        if self.combine == "logits":
            total = None
            for member in self.members:
                logits = member(input_ids, attention_mask).float()
                total = logits if total is None else total + logits
            return total / len(self.members)
        log_probs = torch.stack([torch.log_softmax(m(input_ids, attention_mask).float(), -1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))

    def head_transform(self) -> tuple[None, None]:
        return None, None
