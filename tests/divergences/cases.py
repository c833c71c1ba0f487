"""Every divergence with the settings the tests sweep, paired with its mpmath reference."""

from __future__ import annotations

from functools import partial

from divreg.divergences import get_divergence

from .. import reference as ref

# (id, registered name, options, reference taking (p, q) with the same options)
SPECS = [
    ("forward_kl", "forward_kl", {}, ref.forward_kl),
    ("reverse_kl", "reverse_kl", {}, ref.reverse_kl),
    ("jsd_beta0.5", "generalized_jsd", {"beta": 0.5}, ref.generalized_jsd),
    ("jsd_beta0.1", "generalized_jsd", {"beta": 0.1}, ref.generalized_jsd),
    ("jsd_beta0.9_scaled", "generalized_jsd", {"beta": 0.9, "scaled": True}, ref.generalized_jsd),
    ("skew_kl", "skew_kl", {"alpha": 0.1}, ref.skew_kl),
    ("skew_kl_0.5", "skew_kl", {"alpha": 0.5}, ref.skew_kl),
    ("skew_reverse_kl", "skew_reverse_kl", {"alpha": 0.1}, ref.skew_reverse_kl),
    ("total_variation", "total_variation", {}, ref.total_variation),
    ("alpha_0.5", "alpha_divergence", {"alpha": 0.5}, ref.alpha_divergence),
    ("alpha_0.2", "alpha_divergence", {"alpha": 0.2}, ref.alpha_divergence),
    ("alpha_1.5", "alpha_divergence", {"alpha": 1.5}, ref.alpha_divergence),
    ("alpha_-0.5", "alpha_divergence", {"alpha": -0.5}, ref.alpha_divergence),
    ("topk_bucket", "topk_kl", {"k": 3}, partial(ref.topk_kl, tail="bucket")),
    ("topk_renorm", "topk_kl", {"k": 3, "tail": "renormalize"}, ref.topk_kl),
    ("topk_none", "topk_kl", {"k": 3, "tail": "none"}, ref.topk_kl),  # OSTQuant's released KL-Top; may be < 0
]

# (id, divreg function with its options bound, reference with its options bound)
CASES = [
    (case_id, partial(get_divergence(name).on_logits, **options), partial(reference, **options))
    for case_id, name, options, reference in SPECS
]
CASE_IDS = [case[0] for case in CASES]
