"""What the RL and preference losses need from a model's output, by the signal's type (never a
flag): the log-probs (and entropies) of the sampled tokens, and the exact full-vocabulary
divergence between two signals. :class:`DenseLogits` goes through the plain functions,
:class:`HiddenStates` through :mod:`divreg.fused` (no ``[tokens x vocab]`` logits). Which one a
model gives is decided once, by :func:`gives_hidden_states`."""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..divergences import get_divergence
from ..fused import (TokenLogprobs, TokenStatistics, fused_linear_divergence, fused_linear_token_logprobs,
                     token_logprobs)
from ._signals import DenseLogits, HiddenStates

# From this many vocabulary entries on, a model's signal is its hidden states (the fused path). Measured with
# benchmarks/rl_logprobs.py --tokens 2048 --vocab 1024 8000 32000 (forward + backward, warm): at V=1024 the
# dense path is about 15% faster (its logits are small); at V=8000 the fused one is 1.1x faster with 2.3x less
# memory, at V=32000 1.8x and 5.4x. Only toy vocabularies (the built-in tasks') stay dense.
FUSED_AUTO_VOCAB = 4096
FUSED_SETTINGS = ("auto", "true", "false")


def gives_hidden_states(setting: Union[str, bool], vocab_size: int) -> bool:
    """The one rule for the fused path: ``"true"``, ``"false"``, or ``"auto"`` (hidden states
    from :data:`FUSED_AUTO_VOCAB` vocabulary entries on). A boolean (``fused=true`` on a command
    line) counts as its string.

    Example:
        >>> gives_hidden_states("auto", 1024), gives_hidden_states("auto", 32000)  # FUSED_AUTO_VOCAB = 4096
        (False, True)
        >>> gives_hidden_states(True, 10), gives_hidden_states("false", 151936)
        (True, False)
    """
    setting = str(setting).lower()
    if setting not in FUSED_SETTINGS:
        raise ValueError(f"fused must be one of {list(FUSED_SETTINGS)}, got {setting!r}")
    return setting == "true" or (setting == "auto" and vocab_size >= FUSED_AUTO_VOCAB)


def sampled_token_logprobs(signal: Union[DenseLogits, HiddenStates], token_ids: Tensor, *, temperature: float = 1.0,
                           ignore_index: int = -100) -> TokenLogprobs:
    r"""Per-token :math:`\log\mathrm{softmax}(z / T)` at ``token_ids`` and the entropy, from a
    dense or a hidden-state signal (the latter chunked, never building the logits). 0 at
    ``ignore_index`` positions; gradients flow to the signal's tensors.

    Args:
        signal: the model's next-token signal, (B, T, V) logits or (B, T, H) hidden states.
        token_ids: (B, T) the sampled tokens, or ``ignore_index``.

    Returns:
        :class:`~divreg.fused.TokenLogprobs` of (B, T) log-probs and entropies.

    Example:
        >>> import torch
        >>> from divreg.targets import DenseLogits
        >>> out = sampled_token_logprobs(DenseLogits(torch.zeros(1, 2, 4)), torch.tensor([[3, -100]]))
        >>> # uniform over 4 tokens: log-prob -log 4, entropy log 4; 0 at the ignored position
        >>> [round(v, 4) for v in out.logprobs[0].tolist()], [round(v, 4) for v in out.entropy[0].tolist()]
        ([-1.3863, 0.0], [1.3863, 0.0])
    """
    if isinstance(signal, HiddenStates):
        return fused_linear_token_logprobs(signal.hidden, signal.weight, token_ids, temperature=temperature,
                                           bias=signal.bias, ignore_index=ignore_index, return_entropy=True,
                                           logit_scale=signal.logit_scale, softcap=signal.softcap)
    if isinstance(signal, DenseLogits):
        return token_logprobs(signal.logits, token_ids, temperature=temperature, ignore_index=ignore_index,
                              return_entropy=True)
    raise ValueError(f"sampled_token_logprobs takes DenseLogits or HiddenStates, got {type(signal).__name__}")


def sampled_token_statistics(signal: Union[DenseLogits, HiddenStates], target: Union[DenseLogits, HiddenStates],
                             token_ids: Tensor, *, temperature: float = 1.0,
                             ignore_index: int = -100) -> TokenStatistics:
    r"""Everything an RL step reads per sampled token, from the policy's and the reference's
    signals at the same positions: the policy's log-probs and entropy, the exact
    :math:`\mathrm{KL}(\pi\,\|\,\rho)` over the whole vocabulary, and the reference's log-probs
    (:class:`~divreg.fused.TokenStatistics`; 0 at ``ignore_index``). On hidden states one chunked
    pass over the vocabulary gives all four (:func:`~divreg.fused.fused_linear_token_logprobs`
    with a target); on dense logits, the plain functions. Gradients flow to the policy's signal
    (the log-probs, the entropy and the KL); the reference is a constant.

    Example:
        >>> import torch
        >>> from divreg.targets import DenseLogits
        >>> policy = DenseLogits(torch.tensor([[[0.5, 0.5]]]).log())
        >>> reference = DenseLogits(torch.tensor([[[0.25, 0.75]]]).log())
        >>> out = sampled_token_statistics(policy, reference, torch.tensor([[1]]))
        >>> # KL = 0.5 log(0.5 / 0.25) + 0.5 log(0.5 / 0.75); log 0.5 and log 0.75 at the token
        >>> [round(float(v), 4) for v in (out.logprobs, out.kl, out.target_logprobs)]
        [-0.6931, 0.1438, -0.2877]
    """
    if isinstance(signal, HiddenStates) and isinstance(target, HiddenStates):
        return fused_linear_token_logprobs(signal.hidden, signal.weight, token_ids, temperature=temperature,
                                           bias=signal.bias, ignore_index=ignore_index, logit_scale=signal.logit_scale,
                                           softcap=signal.softcap, target_hidden=target.hidden,
                                           target_weight=target.weight, target_bias=target.bias,
                                           target_logit_scale=target.logit_scale, target_softcap=target.softcap)
    if isinstance(signal, DenseLogits) and isinstance(target, DenseLogits):
        scored = token_logprobs(signal.logits, token_ids, temperature=temperature, ignore_index=ignore_index,
                                return_entropy=True)
        with torch.no_grad():
            target_logprobs = token_logprobs(target.logits, token_ids, temperature=temperature,
                                             ignore_index=ignore_index)
        kl = signal_divergence(signal, target, token_ids != ignore_index, temperature=temperature)
        return TokenStatistics(scored.logprobs, scored.entropy, kl.to(scored.logprobs.dtype), target_logprobs)
    raise ValueError(f"sampled_token_statistics takes two DenseLogits or two HiddenStates, got "
                     f"{type(signal).__name__} and {type(target).__name__}")


def signal_divergence(signal: Union[DenseLogits, HiddenStates], target: Union[DenseLogits, HiddenStates],
                      mask: Tensor, *, divergence: str = "reverse_kl", temperature: float = 1.0,
                      token_weights: Optional[Tensor] = None, reduction: Optional[Callable] = None,
                      num_items_in_batch=None) -> Tensor:
    r"""The exact divergence ``D(softmax(signal / T) || softmax(target / T))`` over the whole
    vocabulary at the masked-in positions, times ``token_weights``.

    With ``reduction`` (a :mod:`divreg.reductions` function) the reduced scalar, with gradient on
    both paths; without it the per-position values (B, T), 0 off the mask (on the hidden-state
    path these carry no gradient: the fused kernel differentiates only through a reduction).
    Both signals must be of one kind.

    Args:
        signal, target: the model's and the target's signals (the target is a constant).
        mask: (B, T) bool, True at the positions that count.
        divergence: a name of :mod:`divreg.divergences` (``"reverse_kl"``: KL(model || target)).
        token_weights: (B, T) weights per position (e.g. a per-completion KL weight), or None.
        reduction, num_items_in_batch: see above.

    Example:
        >>> import torch
        >>> from divreg.targets import DenseLogits
        >>> model = DenseLogits(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]).log())
        >>> target = DenseLogits(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]]).log())
        >>> values = signal_divergence(model, target, torch.tensor([[True, True]]))  # KL(model || target)
        >>> # 0.5 log(0.5 / 0.25) + 0.5 log(0.5 / 0.75); a distribution to itself: 0
        >>> [round(v, 4) for v in values[0].tolist()]
        [0.1438, 0.0]
    """
    if isinstance(signal, HiddenStates) and isinstance(target, HiddenStates):
        return fused_linear_divergence(signal.hidden, signal.weight, target.hidden.detach(), target.weight.detach(),
                                       divergence=divergence, temperature=temperature,
                                       labels=torch.where(mask, 0, -100), bias=signal.bias,
                                       target_bias=None if target.bias is None else target.bias.detach(),
                                       token_weights=token_weights, reduction=reduction or "none",
                                       num_items_in_batch=num_items_in_batch, logit_scale=signal.logit_scale,
                                       softcap=signal.softcap, target_logit_scale=target.logit_scale,
                                       target_softcap=target.softcap)
    if isinstance(signal, DenseLogits) and isinstance(target, DenseLogits):
        values = get_divergence(divergence).on_logits(signal.logits, target.logits.detach(), temperature=temperature,
                                                      mask=mask)  # (B, T), 0 with a zero gradient off the mask
        if token_weights is not None:
            values = values * token_weights.to(values.dtype)
        if reduction is None:
            return values
        return reduction(values, mask) if num_items_in_batch is None else reduction(values, mask, num_items_in_batch)
    raise ValueError(f"signal_divergence takes two DenseLogits or two HiddenStates, got {type(signal).__name__} and "
                     f"{type(target).__name__}")
