"""Building blocks for kernels that evaluate a divergence outside this package (the chunked
:mod:`divreg.fused` path): value-and-gradient forms on log-probabilities and the input checks
they rely on. Public, so that no other package imports a private module of this one.

Each ``with_grad`` form takes ``(log_q, log_p, **options)`` (log-probs of the model and the
target at the temperature already applied) and returns ``(values, gradient)``, the gradient
with respect to the *tempered* logits of q (divide by T for the raw logits). Each also takes
``scratch=``, a :class:`Scratch` that supplies its ``[..., V]`` temporaries, so that a chunk
loop allocates them once per call; the returned gradient may live in a scratch buffer and is
valid until the next call with the same ``Scratch``.
"""

from ._common import Scratch, check_temperature, log_softmax_checked, math_dtype
from ._sparse import check_sparse_target, sparse_kl_with_grad

__all__ = ["Scratch", "check_sparse_target", "check_temperature", "log_softmax_checked", "math_dtype",
           "sparse_kl_with_grad"]
