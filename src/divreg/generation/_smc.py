r"""Sequential Monte Carlo toward the global constrained posterior, and the two baselines.

Target: :math:`\pi(y) \propto g(y) = p(y\,\mathrm{EOS})\, c(y)` over outputs of at most
``max_tokens`` tokens, where c is the constraint (every prefix allowed, the whole complete).
Locally constrained decoding (token masking) samples each token from :math:`p(\cdot|y_{<t}) c`
renormalized: a *different* distribution, which over-weights prefixes whose continuations the
constraint mostly refuses, and can walk into dead ends.

``smc`` (Lipkin et al., 2025, arXiv 2504.05410, Section 3; genlm-control ``sampler/sequence.py``
with llamppl's ``smc_standard``): N particles extended one token at a time by a local sampler
that returns the token and a weight :math:`\hat Z_t` with :math:`E[\hat Z_t 1\{x\}] = p(x) c(x)`
(``sampler="awrs"``: AWRS, few constraint calls; ``"masking"``: the exact local normalizer from a
call on every token). :math:`\log w \mathrel{+}= \log \hat Z_t`; a particle with no allowed token
gets weight 0 and stops; EOS stops a particle; after ``max_tokens`` tokens, EOS is forced with
weight :math:`p(\mathrm{EOS}|y) c(y)` (genlm's ``max_tokens``). After every step, if the
effective sample size :math:`1/\sum_i \bar w_i^2 < ` ``ess_threshold`` N, particles are resampled
(stratified by default, as llamppl; or multinomial) and every weight set to their mean.
:math:`\log \hat Z = \log \mathrm{mean}_i\, w_i` is an unbiased estimate of
:math:`Z = \sum_y g(y)` (of Z, not of log Z). One particle with ``sampler="masking"`` is locally
constrained decoding; ``ess_threshold=0`` is importance sampling without resampling.

``rejection_sampling``: whole sequences from p, kept when the constraint holds (exact samples of
:math:`\pi`; the cost grows as 1/Z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ._awrs import ESTIMATORS, awrs

SAMPLERS = ("awrs", "masking")
RESAMPLING = ("stratified", "multinomial")


@dataclass
class SMCResult:
    """Particles after SMC. ``sequences[i]`` is particle i's output (token ids, EOS left out; a
    dead particle, log-weight -inf, keeps the prefix where it died); ``log_weights`` (N,) float64;
    ``log_ml`` the estimate of log Z (-inf when every particle died)."""

    sequences: list
    log_weights: Tensor
    log_ml: float
    constraint_calls: int
    tokens: int  # tokens sampled (EOS included), for constraint calls per token
    resamples: int
    history: list = field(default_factory=list)  # ESS after each step

    def distribution(self) -> dict:
        """The weighted particles as a distribution over outputs ({} if every particle died)."""
        if self.log_ml == -math.inf:
            return {}
        weights = (self.log_weights - torch.logsumexp(self.log_weights, 0)).exp()
        out: dict = {}
        for sequence, weight in zip(self.sequences, weights.tolist()):
            if weight > 0:
                out[sequence] = out.get(sequence, 0.0) + weight
        return out

    def sample(self, generator: Optional[torch.Generator] = None):
        """One output drawn in proportion to the weights (None if every particle died)."""
        if self.log_ml == -math.inf:
            return None
        index = torch.multinomial(self.log_weights.softmax(0), 1, generator=generator)
        return self.sequences[int(index)]


def masked_sample(log_probs: Tensor, allowed, generator: Optional[torch.Generator] = None):
    """Token masking: the constraint on every token with p > 0, then a draw from p c / Z.

    Returns ``(token or None, log Z, calls)``; Z = the exact local normalizer.

    Example:
        >>> import math, torch
        >>> log_p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
        >>> token, log_z, calls = masked_sample(log_p, lambda t: t != 0, torch.Generator().manual_seed(0))
        >>> token in (1, 2), round(math.exp(log_z), 4), calls  # Z = p(1) + p(2); one call per token
        (True, 0.5, 3)
    """
    candidates = torch.nonzero(log_probs > -math.inf).flatten().tolist()
    keep = [t for t in candidates if allowed(t)]
    if not keep:
        return None, -math.inf, len(candidates)
    local = log_probs.double()[keep]
    log_z = float(torch.logsumexp(local, 0))
    pick = torch.multinomial((local - log_z).exp(), 1, generator=generator)
    return keep[int(pick)], log_z, len(candidates)


def resample_indices(log_weights: Tensor, method: str, generator: Optional[torch.Generator] = None) -> Tensor:
    """N ancestor indices: stratified (one uniform in each of N equal strata) or multinomial.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> half_on_0_and_2 = torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=torch.float64).log()
        >>> resample_indices(half_on_0_and_2, "stratified", g).tolist()  # each quarter of [0, 1) once
        [0, 0, 2, 2]
        >>> resample_indices(torch.zeros(4), "stratified", g).tolist()  # equal weights: each kept once
        [0, 1, 2, 3]
        >>> set(resample_indices(half_on_0_and_2, "multinomial", g).tolist()) <= {0, 2}
        True
    """
    n = log_weights.numel()
    probs = (log_weights - torch.logsumexp(log_weights, 0)).exp()
    if method == "multinomial":
        return torch.multinomial(probs, n, replacement=True, generator=generator)
    points = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    cumulative = probs.cumsum(0)
    cumulative = cumulative / cumulative[-1]  # rounding: the last stratum ends at 1
    return torch.searchsorted(cumulative, points, right=True).clamp_max(n - 1)


def check_pairing(lm, constraint) -> None:
    """Refuse a constraint that does not fit the model: another EOS id, or a vocabulary of
    another size (a token id the constraint cannot read would raise mid-run, or be misread)."""
    eos = getattr(constraint, "eos_token_id", lm.eos_token_id)
    if eos != lm.eos_token_id:
        raise ValueError(f"the constraint's eos_token_id is {eos} but the model's is {lm.eos_token_id}: build the "
                         f"constraint with eos_token_id={lm.eos_token_id}")
    vocabulary = getattr(constraint, "vocabulary", None)
    if vocabulary is not None and len(vocabulary) != lm.vocab_size:
        raise ValueError(f"the constraint's vocabulary has {len(vocabulary)} tokens but the model scores "
                         f"{lm.vocab_size}: give one text per output of the model (for padding ids, a text the constraint refuses: '' "
                         "would be allowed anywhere)")


def _checked(log_probs: Tensor, step: int) -> Tensor:
    if bool(torch.isnan(log_probs).any()):
        raise ValueError(f"the model returned NaN log-probabilities at step {step}")
    return log_probs


def _log_mean_exp(values: Tensor) -> float:
    return float(torch.logsumexp(values, 0) - math.log(values.numel()))


def smc(lm, constraint, n_particles: int, *, max_tokens: int, sampler: str = "awrs", estimator: str = "recursive",
        ess_threshold: float = 0.5, resampling: str = "stratified", generator: Optional[torch.Generator] = None,
        max_accepts: int = 2, max_rejects: Optional[int] = None) -> SMCResult:
    """SMC toward the constrained posterior (see the module docstring).

    ``lm``: a particle model (``TransformersLM``, ``BigramLM``, or any object with ``start``,
    ``advance``, ``reorder``, ``vocab_size``, ``eos_token_id``); ``constraint(prefix_ids, next_id)
    -> bool`` (a ``Constraint``, whose EOS id and vocabulary must be the model's, or any callable);
    ``max_tokens``: tokens before EOS is forced (EOS not counted; genlm-control's ``max_tokens``
    counts it); ``sampler``: ``"awrs"`` or ``"masking"``; ``estimator``, ``max_accepts``,
    ``max_rejects``: AWRS's (see ``awrs``); ``ess_threshold``: resample when the ESS is below this
    fraction of the particles (0: never; 1: every step); ``resampling``: ``"stratified"`` or
    ``"multinomial"``; ``generator``: all randomness.

    Returns an ``SMCResult``: outputs, log-weights, ``log_ml``, constraint calls, tokens, resamples.

    Example:
        >>> import torch
        >>> from divreg.generation import BigramLM, Predicate
        >>> lm = BigramLM(torch.zeros(3), torch.zeros(3, 3), eos_token_id=2)  # uniform over {0, 1, EOS}
        >>> no_one = Predicate(lambda ids: 1 not in ids, eos_token_id=2)  # token 1 is never allowed
        >>> result = smc(lm, no_one, 4, max_tokens=2, generator=torch.Generator().manual_seed(0))
        >>> all(1 not in y for y in result.sequences), bool(result.log_weights.isfinite().all())
        (True, True)
        >>> round(sum(result.distribution().values()), 4)
        1.0
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    if n_particles < 1 or max_tokens < 1:
        raise ValueError(f"n_particles and max_tokens must be at least 1, got {n_particles} and {max_tokens}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold is a fraction of the particles in [0, 1], got {ess_threshold}")
    if sampler == "masking" and (estimator != "recursive" or max_accepts != 2 or max_rejects is not None):
        raise ValueError("estimator, max_accepts and max_rejects are AWRS's: sampler='masking' has none")
    check_pairing(lm, constraint)
    eos = lm.eos_token_id
    sequences = [() for _ in range(n_particles)]
    log_w = torch.zeros(n_particles, dtype=torch.float64)
    done = [False] * n_particles
    calls = tokens = resamples = 0
    history = []
    log_probs = _checked(lm.start(n_particles), 0)
    for step in range(max_tokens + 1):
        chosen = []
        for i in range(n_particles):
            if done[i]:
                chosen.append(eos)
                continue
            prefix = sequences[i]
            if step == max_tokens:  # EOS forced, weighted by p(EOS | y) c(y)
                allowed = constraint(prefix, eos)
                calls += 1
                log_w[i] += float(log_probs[i, eos]) if allowed else -math.inf
                token = eos
            elif sampler == "awrs":
                drawn = awrs(log_probs[i], lambda t: constraint(prefix, t), estimator=estimator, generator=generator,
                             max_accepts=max_accepts, max_rejects=max_rejects)
                token, log_z, used = drawn.token, drawn.log_weight, drawn.constraint_calls
                calls += used
                log_w[i] += log_z
            else:
                token, log_z, used = masked_sample(log_probs[i], lambda t: constraint(prefix, t), generator)
                calls += used
                log_w[i] += log_z
            if token is None or log_w[i] == -math.inf:
                log_w[i], done[i] = -math.inf, True
                chosen.append(eos)
                continue
            tokens += 1
            if token == eos:
                done[i] = True
            else:
                sequences[i] = prefix + (int(token),)
            chosen.append(int(token))
        if all(done):
            break
        alive_mass = torch.logsumexp(log_w, 0)
        if alive_mass == -math.inf:
            break
        ess = float(1.0 / ((log_w - alive_mass).exp() ** 2).sum())
        history.append(ess)
        if ess < ess_threshold * n_particles:
            index = resample_indices(log_w, resampling, generator)
            sequences = [sequences[j] for j in index.tolist()]
            done = [done[j] for j in index.tolist()]
            chosen = [chosen[j] for j in index.tolist()]
            log_w = torch.full_like(log_w, _log_mean_exp(log_w))
            lm.reorder(index)
            resamples += 1
        log_probs = _checked(lm.advance(torch.tensor(chosen, dtype=torch.long)), step + 1)
    return SMCResult(sequences, log_w, _log_mean_exp(log_w), calls, tokens, resamples, history)


@dataclass
class RejectionResult:
    """What :func:`rejection_sampling` returns: the accepted outputs, how many outputs were drawn,
    and the constraint calls and tokens that cost."""
    samples: list  # accepted outputs (EOS left out)
    attempts: int
    constraint_calls: int
    tokens: int


def rejection_sampling(lm, constraint, n_samples: int, *, max_tokens: int, batch_size: int = 64,
                       max_attempts: int = 100_000, generator: Optional[torch.Generator] = None) -> RejectionResult:
    """Whole outputs from p (at most ``max_tokens`` tokens, then EOS), kept when every prefix is
    allowed and the output is complete: exact samples of the posterior. Stops with fewer samples
    after ``max_attempts`` drawn outputs (the caller sees it in ``len(samples)``).

    Example:
        >>> import torch
        >>> from divreg.generation import BigramLM, Predicate
        >>> lm = BigramLM(torch.zeros(3), torch.zeros(3, 3), eos_token_id=2)  # uniform over {0, 1, EOS}
        >>> no_one = Predicate(lambda ids: 1 not in ids, eos_token_id=2)  # token 1 is never allowed
        >>> result = rejection_sampling(lm, no_one, 3, max_tokens=2, generator=torch.Generator().manual_seed(0))
        >>> len(result.samples), all(1 not in y for y in result.samples)
        (3, True)
    """
    if n_samples < 1 or max_tokens < 1 or batch_size < 1:
        raise ValueError("n_samples, max_tokens and batch_size must be at least 1")
    check_pairing(lm, constraint)
    eos = lm.eos_token_id
    samples, attempts, calls, tokens = [], 0, 0, 0
    while len(samples) < n_samples and attempts < max_attempts:
        n = min(batch_size, max_attempts - attempts)
        attempts += n
        sequences, finished = [() for _ in range(n)], [False] * n
        log_probs = _checked(lm.start(n), 0)
        for step in range(max_tokens + 1):
            draws = torch.multinomial(log_probs.double().exp(), 1, generator=generator).flatten().tolist()
            chosen = []
            for i, token in enumerate(draws):
                if finished[i]:
                    chosen.append(eos)
                    continue
                tokens += 1
                if token == eos:
                    finished[i] = True
                elif step == max_tokens:  # too long: outside the target's support
                    finished[i], sequences[i] = True, None
                else:
                    sequences[i] = sequences[i] + (token,)
                chosen.append(token if token != eos and not finished[i] else eos)
            if all(finished):
                break
            log_probs = _checked(lm.advance(torch.tensor(chosen, dtype=torch.long)), step + 1)
        for sequence in sequences:
            if sequence is None or len(samples) >= n_samples:
                continue
            ok = True
            for end in range(len(sequence) + 1):  # each prefix's new token, then EOS; stop at the first refusal
                calls += 1
                if not constraint(sequence[:end], sequence[end] if end < len(sequence) else eos):
                    ok = False
                    break
            if ok:
                samples.append(sequence)
    return RejectionResult(samples, attempts, calls, tokens)
