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

The paper distills the ensemble into a smaller student trained on real and ensemble-generated
text: :meth:`LogitEnsemble.sample_tokens` samples from the combined distribution (each member
keeps its own KV cache), which :func:`divreg.models.generate_examples` calls for an ensemble.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..targets import DenseLogits
from ._causal_lm import CausalLM, ModelSource, build_causal_lm, cache_keyword, model_tokenizer, weights_fingerprint

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

    def fingerprint(self) -> str:
        """sha256 of the members' weights (in order) and the combination rule: which teacher this is."""
        import hashlib

        return hashlib.sha256((weights_fingerprint(self) + self.combine).encode()).hexdigest()

    def signal(self, batch: dict[str, Tensor], hidden: bool = False) -> DenseLogits:
        """The combined next-token logits of ``batch`` at positions ``0 .. T-2`` (dense only)."""
        return DenseLogits(self(batch["input_ids"], batch["attention_mask"], hidden=hidden)[:, :-1])

    def _combine_last(self, logits: list[Tensor]) -> Tensor:
        if self.combine == "logits":
            return torch.stack(logits).mean(0)
        return torch.logsumexp(torch.stack([torch.log_softmax(z, -1) for z in logits]), 0) - math.log(len(logits))

    @torch.no_grad()
    def sample_tokens(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, *, eos_token_id: int,
                      pad_token_id: int, do_sample: bool = True, temperature: float = 1.0,
                      top_p: float = 1.0) -> Tensor:
        """(B, max_new_tokens) tokens drawn one at a time from the combined distribution after
        left-padded prompts ``input_ids`` (B, L): greedy, or sampled at ``temperature`` with nucleus
        ``top_p`` (``transformers``' own warpers, then ``torch.multinomial``, as ``generate``
        samples, so a one-member ensemble draws exactly what its member's ``generate`` does under
        the same seed); after a row's EOS, ``pad_token_id``; fewer than ``max_new_tokens``
        columns when every row has ended. Each member keeps its own KV cache."""
        from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        warpers = LogitsProcessorList(([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else [])
                                      + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []))
        caches = [DynamicCache() for _ in self.members]
        keyword = cache_keyword(self.members[0].model)
        mask = attention_mask.clone()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        step_ids, done, out = input_ids, torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device), []
        for _ in range(max_new_tokens):
            logits = [member.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                   use_cache=True, **{keyword: cache}).logits[:, -1, : self.vocab_size].float()
                      for member, cache in zip(self.members, caches)]
            scores = warpers(input_ids, self._combine_last(logits))
            token = torch.multinomial(torch.softmax(scores, -1), 1).squeeze(1) if do_sample else scores.argmax(-1)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            out.append(token)
            done |= token == eos_token_id
            if bool(done.all()):
                break
            step_ids = token[:, None]
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return torch.stack(out, dim=1)  # fewer columns when every row ended early, as with generate


def load_ensemble(paths: Sequence[str], tokenizer, combine: str = "logits") -> LogitEnsemble:
    """A :class:`LogitEnsemble` of the models saved at ``paths`` (local folders or hub ids), each
    over ``tokenizer``'s tokens. A member whose folder ships another tokenizer than ``tokenizer``
    is refused (the members' logits are averaged token by token)."""
    if not paths:
        raise ValueError("an ensemble needs at least one member path")
    members = []
    for path in paths:
        source = ModelSource(path=path)
        if model_tokenizer(source, tokenizer) is not tokenizer:
            raise ValueError(f"ensemble member {path!r} ships another tokenizer than the run's: the members' logits are "
                             "averaged token by token, so every member must read one tokenizer")
        members.append(CausalLM(build_causal_lm(source, tokenizer, 0), len(tokenizer)))
    return LogitEnsemble(members, combine)


def teacher_fingerprint(model: nn.Module) -> str:
    """Which teacher ``model`` is, by its weights: a :class:`CausalLM`'s model's
    :func:`weights_fingerprint` (what a teacher cache records), an ensemble's :meth:`~LogitEnsemble.fingerprint`."""
    return model.fingerprint() if isinstance(model, LogitEnsemble) else weights_fingerprint(model.model)
