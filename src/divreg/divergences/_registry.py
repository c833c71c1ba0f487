"""Name -> (divergence on logits, value-and-gradient on log-probs), for code that evaluates a
divergence by name (the fused kernel, configs)."""

from __future__ import annotations

from typing import Callable, NamedTuple

from ._alpha import alpha_divergence, alpha_divergence_with_grad
from ._jsd import generalized_jsd, generalized_jsd_with_grad
from ._kl import forward_kl, forward_kl_with_grad, reverse_kl, reverse_kl_with_grad
from ._skew import skew_kl, skew_kl_with_grad, skew_reverse_kl, skew_reverse_kl_with_grad
from ._topk import topk_kl, topk_kl_with_grad
from ._total_variation import total_variation, total_variation_with_grad


class Divergence(NamedTuple):
    """A registered divergence: its function on logits and its value-and-gradient form (the fused kernel's)."""

    on_logits: Callable  # (logits, target_logits, *, temperature, dim, **options) -> values
    # (log_q, log_p, **options) -> (values, gradient w.r.t. the tempered logits of q)
    with_grad: Callable


DIVERGENCES: dict[str, Divergence] = {
    "forward_kl": Divergence(forward_kl, forward_kl_with_grad),
    "reverse_kl": Divergence(reverse_kl, reverse_kl_with_grad),
    "generalized_jsd": Divergence(generalized_jsd, generalized_jsd_with_grad),
    "skew_kl": Divergence(skew_kl, skew_kl_with_grad),
    "skew_reverse_kl": Divergence(skew_reverse_kl, skew_reverse_kl_with_grad),
    "total_variation": Divergence(total_variation, total_variation_with_grad),
    "alpha_divergence": Divergence(alpha_divergence, alpha_divergence_with_grad),
    "topk_kl": Divergence(topk_kl, topk_kl_with_grad),
}


def check_divergence_options(name: str, options: dict) -> None:
    """``ValueError`` unless ``options`` are exactly what divergence ``name`` accepts: every
    required option given (``alpha_divergence`` needs ``alpha``, ``topk_kl`` needs ``k``) and no
    unknown one. Checked before any computation (a ``TypeError`` deep in a kernel says less).

    Example:
        >>> check_divergence_options("alpha_divergence", {"alpha": 0.5})  # valid: returns None
        >>> check_divergence_options("topk_kl", {})
        Traceback (most recent call last):
        ...
        ValueError: divergence 'topk_kl' needs k=...; its options are ['k', 'tail']
    """
    import inspect

    parameters = inspect.signature(get_divergence(name).on_logits).parameters
    allowed = {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"temperature", "dim", "mask"}
    required = {n for n in allowed if parameters[n].default is inspect.Parameter.empty}
    missing, unknown = sorted(required - set(options)), sorted(set(options) - allowed)
    if missing or unknown:
        problems = ([f"needs {', '.join(f'{m}=...' for m in missing)}"] if missing else []) + (
            [f"does not take {unknown}"] if unknown else [])
        raise ValueError(f"divergence {name!r} {' and '.join(problems)}; its options are {sorted(allowed) or 'none'}")


def get_divergence(name: str) -> Divergence:
    """Look a divergence up by name; ``ValueError`` listing the known names otherwise.

    Example:
        >>> import math, torch
        >>> from divreg.divergences import forward_kl
        >>> get_divergence("forward_kl").on_logits is forward_kl
        True
        >>> # KL(p || q) for the target p = (3/4, 1/4) and q uniform: 0.75 log 1.5 + 0.25 log 0.5
        >>> round(float(get_divergence("forward_kl").on_logits(torch.zeros(2), torch.tensor([math.log(3), 0.0]))), 4)
        0.1308
    """
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")
    return DIVERGENCES[name]
