"""Output heads that transform ``z = h W^T + b`` before the softmax: a logit scale ``s z``
(Cohere; Granite's ``z / s`` is the scale ``1 / s``) and final-logit softcapping
``c tanh(s z / c)`` (Gemma 2 and 3), applied chunk by chunk in place, with their derivative for
the chain rule of the fused backward passes."""

from __future__ import annotations

import math
from typing import Optional, Union

from torch import Tensor

Head = tuple  # (logit_scale or None, softcap or None)


def check_head(logit_scale: Optional[float], softcap: Optional[float], side: str = "") -> Head:
    """``(logit_scale, softcap)`` after checking each is None or a finite number > 0."""
    for name, value in (("logit_scale", logit_scale), ("softcap", softcap)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{side}{name} must be a finite number > 0 (or None), got {value!r}")
    return (None if logit_scale is None else float(logit_scale), None if softcap is None else float(softcap))


def apply_head_(logits: Tensor, head: Head) -> Tensor:
    """``logits`` transformed in place: ``s z``, or ``c tanh(s z / c)`` with a softcap ``c``."""
    scale, cap = head
    if cap is not None:
        return logits.mul_((scale or 1.0) / cap).tanh_().mul_(cap)
    if scale is not None:
        logits.mul_(scale)
    return logits


def head_derivative(transformed: Tensor, head: Head, out: Optional[Tensor] = None) -> Union[Tensor, float, None]:
    """d(head)/dz from the *transformed* logits ``y``: ``s (1 - (y / c)^2)`` with a softcap (a
    tensor, written to ``out`` when given), ``s`` for a scale alone, None for the plain head."""
    scale, cap = head
    if cap is not None:
        deriv = transformed.div(cap) if out is None else out.copy_(transformed).div_(cap)
        return deriv.square_().neg_().add_(1.0).mul_(scale or 1.0)
    return scale
