"""Input checks and log-space building blocks shared by every divergence.

Everything here works on log-probabilities over the last dimension and keeps the
convention ``0 * log 0 = 0``: positions outside a distribution's support (log-prob
``-inf``) contribute exactly zero, with finite gradients, instead of ``nan``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

# Above this log-ratio, log((1 - w) + w * exp(d)) is evaluated as a logaddexp instead of
# log1p(w * expm1(d)), whose expm1 would lose range (exp(20) ~ 5e8 is far from fp32 overflow).
_LOG_RATIO_CAP = 20.0


class Scratch:
    """Temporaries of the value-and-gradient forms, one buffer per slot, reused across calls.

    The fused kernel evaluates a divergence on one ``[chunk x V]`` block after another. Each
    ``with_grad`` form asks for its temporaries here (``scratch.like(slot, tensor)``) instead of
    allocating them, so a whole fused call allocates each temporary once and the allocator never
    has to recycle freed ``[chunk x V]`` blocks (which made peak memory vary from run to run).
    A buffer grows when a larger block asks for it; a smaller block gets a view of its first
    rows. Slots 0-3 belong to the divergence forms; callers outside them use other numbers.
    ``Scratch(enabled=False)`` (the default of every form) returns fresh tensors.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._buffers: dict[int, Tensor] = {}

    def like(self, slot: int, tensor: Tensor) -> Tensor:
        """An uninitialised tensor with the shape, dtype and device of ``tensor`` (a 2-D block)."""
        if not self.enabled or tensor.dim() != 2:
            return torch.empty_like(tensor)
        return self.block(slot, tensor.shape[0], tensor.shape[1], tensor.dtype, tensor.device)

    def block(self, slot: int, rows: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised ``(rows, width)`` tensor: a view of the slot's buffer when enabled."""
        if not self.enabled:
            return torch.empty(rows, width, dtype=dtype, device=device)
        buffer = self._buffers.get(slot)
        if (buffer is None or buffer.shape[0] < rows or buffer.shape[1] != width
                or buffer.dtype != dtype or buffer.device != device):
            buffer = self._buffers[slot] = torch.empty(rows, width, dtype=dtype, device=device)
        return buffer[:rows]


FRESH = Scratch(enabled=False)


def exp_into(scratch: Scratch, slot: int, log_a: Tensor) -> Tensor:
    """``exp(log_a)`` written into a scratch buffer."""
    return torch.exp(log_a, out=scratch.like(slot, log_a))


def check_temperature(temperature: float) -> None:
    """Raise ``ValueError`` unless ``temperature`` is a finite number > 0.

    Example:
        >>> check_temperature(2.0)
        >>> check_temperature(0.0)
        Traceback (most recent call last):
        ...
        ValueError: temperature must be finite and > 0, got 0.0; use 1.0 for no softening
    """
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            f"temperature must be finite and > 0, got {temperature}; use 1.0 for no softening"
        )


def check_unit_interval(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``0 <= value <= 1``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def check_finite_logits(name: str, tensor: Tensor) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or +inf (-inf is a valid banned token)."""
    if not torch.is_floating_point(tensor):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if not bool((tensor < math.inf).all()):  # NaN < inf is False, so this catches both
        kind = "NaN" if bool(torch.isnan(tensor).any()) else "+inf"
        raise ValueError(
            f"{name} contains {kind}; logits must be finite or -inf (for banned tokens). "
            "Check the model's forward pass (overflow in low precision is a common cause)."
        )


def check_same_shape(logits: Tensor, target_logits: Tensor) -> None:
    """Raise ``ValueError`` with a vocabulary-specific message if the shapes differ."""
    if logits.dim() == 0 or target_logits.dim() == 0:
        raise ValueError("logits and target_logits need at least one (vocabulary) dimension")
    if logits.shape[-1] != target_logits.shape[-1]:
        raise ValueError(
            f"vocabulary-size mismatch: logits have V={logits.shape[-1]} but target_logits have "
            f"V={target_logits.shape[-1]}. If both models share one tokenizer and one side pads "
            "its embedding matrix, slice the padded side to the tokenizer's size first; if the "
            "tokenizers differ, use a cross-tokenizer loss instead."
        )
    if logits.shape != target_logits.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)} vs target_logits "
            f"{tuple(target_logits.shape)}; they must match exactly (no broadcasting)"
        )
    if logits.shape[-1] == 0:
        raise ValueError("the vocabulary dimension is empty (size 0)")


def math_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32 for half/bfloat16/fp32 inputs, fp64 if any input is fp64.

    Example:
        >>> import torch
        >>> math_dtype(torch.zeros(2, dtype=torch.bfloat16))  # half precision is computed in fp32
        torch.float32
        >>> math_dtype(torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.float64))
        torch.float64
    """
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def log_softmax_checked(name: str, logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """``log_softmax(logits / temperature)`` in ``dtype``; rejects rows that are all ``-inf``.

    Example:
        >>> import math, torch
        >>> log_probs = log_softmax_checked("logits", torch.tensor([0.0, math.log(9)]), 2.0, torch.float64)
        >>> [round(v, 4) for v in log_probs.exp().tolist()]  # (0, log 9) / 2 = (0, log 3): probabilities (1/4, 3/4)
        [0.25, 0.75]
        >>> log_softmax_checked("logits", torch.full((2,), -math.inf), 1.0, torch.float32)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: logits has a row where every entry is -inf, which is not a distribution; ...
    """
    log_probs = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    if bool(torch.isnan(log_probs).any()):
        raise ValueError(
            f"{name} has a row where every entry is -inf, which is not a distribution; "
            "at least one token per position must have a finite logit"
        )
    return log_probs


def prepare_log_probs(
    logits: Tensor, target_logits: Tensor, temperature: float, dim: int = -1, mask: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """Validate a (model, target) logit pair and return their tempered log-probs.

    Returns ``(log_q, log_p)`` with the distribution dimension moved last, in fp32
    (fp64 if either input is fp64). With ``mask``, the model's logits at masked positions are
    the target's (detached) first (see :func:`neutralize_masked`).
    """
    check_temperature(temperature)
    check_same_shape(logits, target_logits)
    check_finite_logits("target_logits", target_logits)  # first: masked positions of the model copy the target
    if mask is not None:
        logits = neutralize_masked(logits, target_logits, mask, dim)
    check_finite_logits("logits", logits)
    logits, target_logits = logits.movedim(dim, -1), target_logits.movedim(dim, -1)
    dtype = math_dtype(logits, target_logits)
    log_p = log_softmax_checked("target_logits", target_logits, temperature, dtype)
    log_q = log_softmax_checked("logits", logits, temperature, dtype)
    return log_q, log_p


def neutralize_masked(logits: Tensor, target_logits: Tensor, mask: Optional[Tensor], dim: int = -1) -> Tensor:
    """``logits`` with every masked position (``mask`` False) replaced by the detached target's
    logits, so any divergence there is 0 with a zero, finite gradient. A reduction leaves masked
    values out, but autograd still differentiates them: where the target bans a token the model
    uses (a -inf target logit), reverse KL is +inf and its gradient 0 * inf = NaN would reach the
    model. ``mask``: bool, ``logits.shape`` without ``dim``."""
    if mask is None:
        return logits
    expected = logits.shape[:dim % logits.dim()] + logits.shape[dim % logits.dim() + 1:]
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != expected:
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape {tuple(expected)} (the logits' shape without the "
                         f"vocabulary dimension), got {got}; e.g. reductions.mask_from_labels(labels)")
    return torch.where(mask.unsqueeze(dim % logits.dim()), logits, target_logits.detach().to(logits.dtype))


def on_support(log_a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(support, log a there (0 elsewhere), a there (0 elsewhere))`` for log-probs ``log_a``.

    Substituting 0 off the support keeps every later operation finite, so gradients never
    meet ``0 * inf``.
    """
    support = log_a > -math.inf
    log_a_on = torch.where(support, log_a, 0.0)
    return support, log_a_on, torch.where(support, log_a_on.exp(), 0.0)


def kl_from_log_probs(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``sum_i a_i (log a_i - log b_i)`` over the last dim, with ``0 log 0 = 0``.

    ``+inf`` where ``a`` has mass that ``b`` lacks (the true value).
    """
    support, log_a_on, a = on_support(log_a)
    return (a * (log_a_on - torch.where(support, log_b, 0.0))).sum(-1)


def _log_mixture_ratio(d: Tensor, w: float) -> Tensor:
    """``log((1 - w) + w * exp(d))`` elementwise, accurate for every ``d`` and ``w in [0, 1]``.

    Near zero (small ``w`` or small ``d``) it is ``log1p(w * expm1(d))``, which keeps full
    relative precision; elsewhere a ``logaddexp``, which never overflows. Both branches
    are kept finite where unselected so that gradients carry no ``nan``.
    """
    x = w * torch.expm1(d.clamp(max=_LOG_RATIO_CAP))
    use_log1p = (d <= _LOG_RATIO_CAP) & (x.abs() < 0.5)
    near_zero = torch.log1p(torch.where(use_log1p, x, 0.0))
    log_w = math.log(w) if w > 0 else -math.inf
    log_one_minus_w = math.log1p(-w) if w < 1 else -math.inf
    far = torch.logaddexp(
        torch.full_like(d, log_one_minus_w), log_w + torch.where(use_log1p, 0.0, d)
    )
    return torch.where(use_log1p, near_zero, far)


def log_ratio_to_mixture(log_a: Tensor, log_b: Tensor, w: float) -> tuple[Tensor, Tensor]:
    """``(a, log(a / m))`` elementwise, ``m = (1 - w) a + w b``, both 0 off ``a``'s support.

    ``log(a / m) = -log((1 - w) + w b / a)``, accurate for every ``w in [0, 1]``.
    """
    support, log_a_on, a = on_support(log_a)
    d = torch.where(support, log_b - log_a_on, 0.0)  # log(b / a); 0 gives log-ratio 0
    return a, -_log_mixture_ratio(d, w)


def kl_to_mixture(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """``KL(a || (1 - w) a + w b)`` over the last dim, accurate for every ``w in [0, 1]``.

    .. math:: -\\sum_{i: a_i > 0} a_i \\log\\big((1 - w) + w\\, b_i / a_i\\big)

    ``w = 1`` gives ``KL(a || b)``; ``w = 0`` gives 0.
    """
    a, log_a_over_m = log_ratio_to_mixture(log_a, log_b, w)
    return (a * log_a_over_m).sum(-1)


def kl_to_mixture_over_w(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """``KL(a || (1 - w) a + w b) / w``, continuous at ``w = 0``.

    The limit at ``w -> 0`` is ``sum_{a_i > 0} (a_i - b_i)``: zero when ``b``'s support lies
    inside ``a``'s, else the mass of ``b`` outside it.
    """
    if w > 0:
        return kl_to_mixture(log_a, log_b, w) / w
    support, _, a = on_support(log_a)
    return (a - torch.where(support, log_b.exp(), 0.0)).sum(-1)


def power_terms(log_a: Tensor, log_b: Tensor, s: float) -> Tensor:
    """``a_i^(1-s) b_i^s - a_i`` elementwise on ``a``'s support (0 elsewhere), ``s != 0``.

    Evaluated as ``a_i * expm1(s * log(b_i / a_i))``, which keeps full precision when the
    term is near zero; large exponents switch to a direct ``exp``, which cannot overflow
    for s in (0, 1).
    """
    support, log_a_on, a = on_support(log_a)
    z = torch.where(support, s * (log_b - log_a_on), 0.0)
    near_zero = z.abs() < 1.0  # False for +-inf as well
    via_expm1 = a * torch.expm1(torch.where(near_zero, z, 0.0))
    via_exp = torch.exp(log_a_on + torch.where(near_zero, 0.0, z)) - a
    return torch.where(support, torch.where(near_zero, via_expm1, via_exp), 0.0)


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1)`` without an ``a * b`` temporary (a batched BLAS dot)."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).reshape(a.shape[:-1])


def expected_log_ratio(a: Tensor, log_ratio: Tensor) -> tuple[Tensor, bool]:
    """``sum_i a_i log_ratio_i`` per row by a batched dot, with ``0 * log 0 = 0``: rows where a
    zero of ``a`` meets an infinite ratio (NaN in the dot) are re-summed with the mask. Returns
    the sums and whether any row needed that (the caller masks its gradient the same way)."""
    value = row_dot(a, log_ratio)
    if not bool(torch.isnan(value).any()):
        return value, False
    return torch.where(a > 0, a * log_ratio, 0.0).sum(-1), True


# Mixture weights in this range let the fused kernels use the direct log-space forms (logaddexp
# mixture, p^a q^(1-a) sums), as accurate as the log-probs they start from; nearer 0 or 1 the
# log1p/expm1 forms above keep relative precision.
LEAN_WEIGHT_RANGE = (0.05, 0.95)


def log_mixture(log_a: Tensor, log_b: Tensor, weight_b: float, scratch: Scratch = FRESH) -> Tensor:
    """``log((1 - weight_b) a + weight_b b)`` by logaddexp, for 0 < weight_b < 1, in scratch
    slot 0 (slot 1 holds an intermediate and is free again on return)."""
    log_m = torch.add(log_b, math.log(weight_b), out=scratch.like(0, log_b))
    shifted_a = torch.add(log_a, math.log1p(-weight_b), out=scratch.like(1, log_a))
    return torch.logaddexp(log_m, shifted_a, out=log_m)


def mixture_in_probability_space(a: Tensor, b: Tensor, weight_b: float, scratch: Scratch = FRESH) -> Tensor:
    """``m = (1 - weight_b) a + weight_b b`` from probabilities (one ``lerp`` pass; every term is
    >= 0 and ``m >= min(w, 1 - w) max(a, b)``, so its relative error is a few ulps), clamped
    below at the smallest normal float so that ``log m`` is finite and ``a b / m`` is 0, not
    NaN, where both underflow; in scratch slot 0. For 0.05 <= weight_b <= 0.95 (see
    ``LEAN_WEIGHT_RANGE``); an entry that underflows changes a value by at most ~1e-38."""
    m = torch.lerp(a, b, weight_b, out=scratch.like(0, a))
    return m.clamp_min_(torch.finfo(m.dtype).tiny)


def project_to_logits(grad_log_q: Tensor, q: Tensor) -> Tensor:
    """Chain rule through ``log_softmax``: from ``g = dD/dlog q`` to ``dD/dz = g - q sum(g)``
    (for the tempered logits ``z = logits / T``; divide by T for the raw logits).
    Writes into ``grad_log_q`` (callers pass a tensor they own)."""
    return grad_log_q.addcmul_(q, grad_log_q.sum(-1, keepdim=True), value=-1.0)



def logsumexp_or_neg_inf(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """``logsumexp`` that returns ``-inf`` for an all ``-inf`` slice with zero (not nan) gradient."""
    empty = (x == -math.inf).all(dim, keepdim=True)
    result = torch.logsumexp(torch.where(empty, 0.0, x), dim, keepdim=True)
    result = torch.where(empty, -math.inf, result)
    return result if keepdim else result.squeeze(dim)
