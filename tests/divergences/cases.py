"""Every divergence with the settings the tests sweep, paired with its mpmath reference."""

from __future__ import annotations

from functools import partial

from divreg import divergences as D

from .. import reference as ref

# (id, divreg function with its options bound, reference taking (p, q))
CASES = [
    ("forward_kl", D.forward_kl, ref.forward_kl),
    ("reverse_kl", D.reverse_kl, ref.reverse_kl),
    ("jsd_beta0.5", partial(D.generalized_jsd, beta=0.5), partial(ref.generalized_jsd, beta=0.5)),
    ("jsd_beta0.1", partial(D.generalized_jsd, beta=0.1), partial(ref.generalized_jsd, beta=0.1)),
    ("jsd_beta0.9_scaled", partial(D.generalized_jsd, beta=0.9, scaled=True),
     partial(ref.generalized_jsd, beta=0.9, scaled=True)),
    ("skew_kl", partial(D.skew_kl, alpha=0.1), partial(ref.skew_kl, alpha=0.1)),
    ("skew_kl_0.5", partial(D.skew_kl, alpha=0.5), partial(ref.skew_kl, alpha=0.5)),
    ("skew_reverse_kl", partial(D.skew_reverse_kl, alpha=0.1), partial(ref.skew_reverse_kl, alpha=0.1)),
    ("total_variation", D.total_variation, ref.total_variation),
    ("alpha_0.5", partial(D.alpha_divergence, alpha=0.5), partial(ref.alpha_divergence, alpha=0.5)),
    ("alpha_0.2", partial(D.alpha_divergence, alpha=0.2), partial(ref.alpha_divergence, alpha=0.2)),
    ("alpha_1.5", partial(D.alpha_divergence, alpha=1.5), partial(ref.alpha_divergence, alpha=1.5)),
    ("alpha_-0.5", partial(D.alpha_divergence, alpha=-0.5), partial(ref.alpha_divergence, alpha=-0.5)),
    ("topk_bucket", partial(D.topk_kl, k=3), partial(ref.topk_kl, k=3, tail="bucket")),
    ("topk_renorm", partial(D.topk_kl, k=3, tail="renormalize"), partial(ref.topk_kl, k=3, tail="renormalize")),
]
CASE_IDS = [case[0] for case in CASES]
