"""SMC, the baselines and the exact toy distributions.

The toy: a random bigram LM over 8 tokens (7 = EOS), outputs of at most 4 tokens, a prefix
constraint with dead ends (non-decreasing tokens, never 6 twice in a row; complete when at least 2
tokens sum to a multiple of 3: a prefix can be allowed yet have no complete continuation). Exact
distributions are checked against brute-force enumeration of all 8^0..8^4 sequences; the samplers
against the exact distributions by z-tests (5 standard errors, fixed seeds)."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from divreg.generation import (BigramLM, Predicate, Regex, TransformersLM, distribution_kl,
                               exact_importance_resampling, exact_locally_constrained, exact_posterior, given_success,
                               rejection_sampling, resample_indices, smc, outcome_total_variation)

EOS, MAX = 7, 4


def _prefix(ids):
    return all(a <= b for a, b in zip(ids, ids[1:])) and not (len(ids) >= 2 and ids[-1] == ids[-2] == 6)


def _complete(ids):
    return len(ids) >= 2 and sum(ids) % 3 == 0 and _prefix(ids)


CONSTRAINT = Predicate(_prefix, _complete, eos_token_id=EOS)


@pytest.fixture(scope="module")
def lm():
    return BigramLM.random(8, EOS, torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def exact(lm):
    pi, log_z = exact_posterior(lm, CONSTRAINT, MAX)
    q, failure = exact_locally_constrained(lm, CONSTRAINT, MAX)
    return pi, log_z, q, failure


def _sequence_log_prob(lm, ids):
    total, prefix = 0.0, ()
    for token in ids + (EOS,):
        total += float(lm.next_log_probs(prefix)[token])
        prefix += (token,)
    return total


def test_exact_posterior_matches_brute_force(lm, exact):
    pi, log_z, _, _ = exact
    g = {}
    for length in range(MAX + 1):
        for ids in itertools.product(range(EOS), repeat=length):
            if _complete(ids) and all(_prefix(ids[:k]) for k in range(1, length + 1)):
                g[ids] = math.exp(_sequence_log_prob(lm, ids))
    z = sum(g.values())
    assert abs(math.log(z) - log_z) < 1e-12 and set(g) == set(pi)
    assert max(abs(g[y] / z - pi[y]) for y in g) < 1e-14


def test_locally_constrained_decoding_by_hand_and_by_sampling(lm, exact):
    pi, _, q, failure = exact
    assert abs(sum(q.values()) + failure - 1) < 1e-12 and 0.1 < failure < 0.9  # dead ends are reached
    y = max(q, key=q.get)  # one output by hand: the product of renormalized allowed probabilities
    by_hand, prefix = 1.0, ()
    for token in y + (EOS,):
        p = lm.next_log_probs(prefix).exp()
        candidates = [EOS] if len(prefix) == MAX else range(8)
        allowed = [t for t in candidates if CONSTRAINT(prefix, t)]
        by_hand *= float(p[token] / p[allowed].sum())
        prefix += (token,)
    assert abs(by_hand - q[y]) < 1e-14
    # one particle of SMC with masking is locally constrained decoding
    generator, runs = torch.Generator().manual_seed(0), 3000
    counts, dead = {}, 0
    for _ in range(runs):
        result = smc(lm, CONSTRAINT, 1, max_tokens=MAX, sampler="masking", generator=generator)
        if result.log_ml == -math.inf:
            dead += 1
        else:
            counts[result.sequences[0]] = counts.get(result.sequences[0], 0) + 1
    for outcome, exact_probability, count in [(None, failure, dead)] + [(y, q[y], counts.get(y, 0)) for y in
                                                                        sorted(q, key=q.get)[-5:]]:
        se = math.sqrt(exact_probability * (1 - exact_probability) / runs)
        assert abs(count / runs - exact_probability) < 5 * se, outcome
    assert distribution_kl(given_success(q, failure), pi) > 0.05  # masking is not the posterior


def test_exact_importance_resampling_against_quadrature_and_sums(exact):
    pi, _, q, failure = exact
    outputs = sorted(q)
    qs = np.array([q[y] for y in outputs])
    ws = np.array([pi.get(y, 0.0) for y in outputs]) / qs
    one, f1 = exact_importance_resampling(pi, q, failure, 1)
    assert f1 == failure and all(abs(one[y] - q[y]) < 1e-15 for y in q)
    for n in (2, 5, 30):
        dist, fail = exact_importance_resampling(pi, q, failure, n)
        assert abs(sum(dist.values()) + fail - 1) < 1e-10 and fail == pytest.approx(failure ** n, rel=1e-12)
        for i in (0, len(outputs) // 2, int(np.argmax(ws))):
            reference = n * qs[i] * ws[i] * quad(lambda t: math.exp(-t * ws[i]) * (float(np.exp(-t * ws) @ qs)
                                                                                   + failure) ** (n - 1),
                                                 0, np.inf, epsabs=0, epsrel=1e-11, limit=200)[0]
            assert dist[outputs[i]] == pytest.approx(reference, rel=1e-8, abs=1e-13)
    tvs = [outcome_total_variation(pi, *exact_importance_resampling(pi, q, failure, n)[::1], 0.0) for n in (1, 4, 16, 64)]
    assert tvs == sorted(tvs, reverse=True) and tvs[-1] < 0.05


@pytest.mark.parametrize("pi_b", [0.3, 1e-6, 1e-10])
@pytest.mark.parametrize("n", [2, 200, 1000])
def test_exact_importance_resampling_against_the_binomial_sum(pi_b, n):
    """Two outputs: P_n(A) = sum_k C(n, k) q_A^k q_B^(n-k) k w_A / (k w_A + (n - k) w_B), exactly;
    weights 8 orders of magnitude apart (where scipy's quad itself is off by 6%)."""
    q_a = 0.02
    w_a, w_b = (1 - pi_b) / q_a, pi_b / (1 - q_a)
    reference = sum(math.comb(n, k) * q_a ** k * (1 - q_a) ** (n - k) * k * w_a / (k * w_a + (n - k) * w_b)
                    for k in range(1, n + 1))
    dist, fail = exact_importance_resampling({"A": 1 - pi_b, "B": pi_b}, {"A": q_a, "B": 1 - q_a}, 0.0, n)
    assert fail == 0.0 and dist["A"] == pytest.approx(reference, rel=1e-12)
    assert dist["A"] + dist["B"] == pytest.approx(1.0, abs=1e-12)


def test_exact_importance_resampling_counts_zero_weight_outputs_as_failures():
    pi, q = {"a": 1.0}, {"a": 0.5, "b": 0.5}  # "b" has weight 0: its particle dies
    assert exact_importance_resampling(pi, q, 0.0, 1) == ({"a": 0.5}, 0.5)
    dist, fail = exact_importance_resampling(pi, q, 0.0, 3)
    assert dist["a"] == pytest.approx(1 - 0.5 ** 3, rel=1e-12) and fail == pytest.approx(0.125, rel=1e-12)


def _average_distribution(lm, n, runs, seed, **options):
    generator = torch.Generator().manual_seed(seed)
    totals, squares, dead, estimates = {}, {}, 0, []
    for _ in range(runs):
        result = smc(lm, CONSTRAINT, n, max_tokens=MAX, generator=generator, **options)
        estimates.append(math.exp(result.log_ml))
        distribution = result.distribution()
        dead += not distribution
        for y, weight in distribution.items():
            totals[y] = totals.get(y, 0.0) + weight
            squares[y] = squares.get(y, 0.0) + weight * weight
    means = {y: v / runs for y, v in totals.items()}
    errors = {y: math.sqrt(max(squares[y] / runs - means[y] ** 2, 0.0) / runs) for y in means}
    return means, errors, dead / runs, estimates


def test_importance_sampling_with_masking_matches_the_exact_formula(lm, exact):
    pi, _, q, failure = exact
    exact_dist, exact_fail = exact_importance_resampling(pi, q, failure, 4)
    means, errors, dead, _ = _average_distribution(lm, 4, 1500, 1, sampler="masking", ess_threshold=0.0)
    assert abs(dead - exact_fail) < 5 * math.sqrt(exact_fail * (1 - exact_fail) / 1500)
    for y in sorted(exact_dist, key=exact_dist.get)[-8:]:
        assert abs(means.get(y, 0.0) - exact_dist[y]) < 5 * errors.get(y, 0.0) + 1e-3, y


@pytest.mark.parametrize("estimator", ["recursive", "two_pass", "geometric"])
def test_awrs_smc_estimates_z_without_bias(lm, exact, estimator):
    _, log_z, _, _ = exact
    _, _, _, estimates = _average_distribution(lm, 4, 400, 2, estimator=estimator, ess_threshold=0.5)
    mean, se = float(np.mean(estimates)), float(np.std(estimates) / math.sqrt(len(estimates)))
    assert abs(mean - math.exp(log_z)) < 5 * se, (mean, math.exp(log_z), se)


def test_awrs_smc_approaches_the_posterior_as_particles_grow(lm, exact):
    pi, _, q, failure = exact
    tv = {}
    for n, runs in [(1, 400), (4, 200), (32, 60)]:
        means, _, dead, _ = _average_distribution(lm, n, runs, 3)
        tv[n] = outcome_total_variation(pi, means, 0.0, dead)
    assert tv[1] > tv[4] > tv[32] and tv[32] < 0.12, tv
    assert abs(tv[1] - outcome_total_variation(pi, q, 0.0, failure)) < 0.1  # one particle: locally constrained decoding


def test_rejection_sampling_is_exact(lm, exact):
    pi, _, _, _ = exact
    result = rejection_sampling(lm, CONSTRAINT, 1500, max_tokens=MAX, generator=torch.Generator().manual_seed(4))
    assert len(result.samples) == 1500 and result.attempts > 1500 and result.constraint_calls >= 1500
    for y in sorted(pi, key=pi.get)[-6:]:
        frequency = result.samples.count(y) / 1500
        assert abs(frequency - pi[y]) < 5 * math.sqrt(pi[y] * (1 - pi[y]) / 1500), y


def test_resampling_indices():
    log_w = torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=torch.float64).log()
    for _ in range(20):
        counts = torch.bincount(resample_indices(log_w, "stratified", torch.Generator().manual_seed(_)), minlength=4)
        assert counts[1] == 0 and counts[0] == 2 and counts[2] <= 1 and counts[3] <= 1 and int(counts.sum()) == 4
    draws = torch.cat([resample_indices(log_w, "multinomial", torch.Generator().manual_seed(s)) for s in range(500)])
    assert (draws != 1).all() and abs(float((draws == 0).double().mean()) - 0.5) < 5 * math.sqrt(0.25 / 2000)


def test_everything_refused_and_errors(lm):
    nothing = Predicate(lambda ids: False, eos_token_id=EOS)
    result = smc(lm, nothing, 3, max_tokens=MAX)
    assert result.log_ml == -math.inf and result.distribution() == {} and result.sample() is None
    with pytest.raises(ValueError, match="allows no output"):
        exact_posterior(lm, nothing, MAX)
    with pytest.raises(ValueError, match="eos_token_id is 3 but the model's is 7"):
        smc(lm, Predicate(_prefix, eos_token_id=3), 2, max_tokens=MAX)
    nine = Regex("a+", list("abcdefg") + ["<eos>", "x"], eos_token_id=EOS)
    with pytest.raises(ValueError, match="vocabulary has 9 tokens but the model scores 8"):
        rejection_sampling(lm, nine, 1, max_tokens=MAX)
    with pytest.raises(ValueError, match="vocabulary has 9 tokens"):
        exact_posterior(lm, nine, MAX)
    broken = BigramLM(torch.zeros(8), torch.full((8, 8), float("nan")), EOS)
    with pytest.raises(ValueError, match="NaN log-probabilities at step 1"):
        smc(broken, CONSTRAINT, 2, max_tokens=MAX, sampler="masking")
    for bad, match in [({"sampler": "beam"}, "sampler must be one of"), ({"estimator": "x"}, "estimator must be"),
                       ({"resampling": "x"}, "resampling must be one of"), ({"ess_threshold": 2.0}, "ess_threshold"),
                       ({"sampler": "masking", "max_rejects": 5}, "sampler='masking' has none")]:
        with pytest.raises(ValueError, match=match):
            smc(lm, CONSTRAINT, 2, max_tokens=MAX, **bad)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=6, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=64, max_position_embeddings=32, bos_token_id=4,
                         eos_token_id=5)
    return LlamaForCausalLM(config)


def test_transformers_particles_use_the_cache_correctly_and_reach_the_posterior(tmp_path):
    from transformers import AutoModelForCausalLM

    _tiny_llama().save_pretrained(tmp_path)  # the real loading path, from a local folder
    lm = TransformersLM(AutoModelForCausalLM.from_pretrained(tmp_path), [4])
    log_probs, sequences = lm.start(3), [(), (), ()]
    for step, tokens in enumerate([[0, 1, 2], [3, 3, 0], [1, 2, 3]]):
        if step == 2:
            lm.reorder(torch.tensor([2, 0, 0]))
            sequences = [sequences[2], sequences[0], sequences[0]]
        log_probs = lm.advance(torch.tensor(tokens))
        sequences = [s + (t,) for s, t in zip(sequences, tokens)]
        for i, sequence in enumerate(sequences):
            assert torch.allclose(log_probs[i], lm.next_log_probs(sequence), atol=1e-5)
    vocabulary = ["0", "1", "2", "3", "<s>", "</s>"]
    constraint = Regex(r"(1|2)+0?3", vocabulary, eos_token_id=5)
    pi, _ = exact_posterior(lm, constraint, 3)
    q, failure = exact_locally_constrained(lm, constraint, 3)
    assert outcome_total_variation(pi, q, 0.0, failure) > 0.5  # masking is far from the posterior here
    means, runs = {}, 80
    generator = torch.Generator().manual_seed(0)
    for _ in range(runs):
        result = smc(lm, constraint, 16, max_tokens=3, generator=generator)
        for y, weight in result.distribution().items():
            means[y] = means.get(y, 0.0) + weight / runs
    assert set(means) <= set(pi) and outcome_total_variation(pi, means) < 0.15  # 0.07 with 200 runs
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        TransformersLM(lm.model, [])
    lm.model.config.eos_token_id = [5, 3]
    with pytest.raises(ValueError, match=r"several EOS ids \[5, 3\]: pass eos_token_id="):
        TransformersLM(lm.model, [4])
    assert TransformersLM(lm.model, [4], eos_token_id=3).eos_token_id == 3
