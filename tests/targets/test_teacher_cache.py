"""The teacher cache (rows keyed by example id) and the vocabulary policy, on real tiny models."""

import pytest
import torch

from divreg.data import IGNORE_INDEX, collate
from divreg.targets import shared_vocab_size

from ..recipes import lm_fixtures as fx
from ..recipes.test_lm_losses import _write_cache


def test_cache_rows_follow_example_ids_under_shuffling(tmp_path):
    teacher = fx.model(seed=2).eval()
    examples = fx.examples(12)
    cache = _write_cache(tmp_path, teacher, examples)
    assert cache.manifest["shards"] > 1
    shuffled = [examples[i] for i in torch.randperm(12, generator=torch.Generator().manual_seed(3)).tolist()]
    for micro in (shuffled[:5], shuffled[5:7], shuffled[7:]):  # accumulation-sized pieces, any order
        batch = collate(micro, fx.tokenizer().pad_token_id, length=24)
        ids, logprobs, tail = cache.lookup(batch["example_ids"].tolist(), 23)
        with torch.no_grad():
            log_p = torch.log_softmax(teacher(batch["input_ids"], batch["attention_mask"])[:, :-1], -1)
        top = log_p.topk(5, -1)
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        assert torch.equal(ids[mask], top.indices[mask])
        torch.testing.assert_close(logprobs[mask], top.values[mask], rtol=0, atol=1e-6)
        expected_tail = torch.logsumexp(log_p.scatter(-1, top.indices, -torch.inf), -1)
        torch.testing.assert_close(tail[mask], expected_tail[mask], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not in the teacher cache"):
        cache.lookup([999], 23)


def test_vocabulary_policy():
    tok, other = fx.tokenizer(300), fx.tokenizer(280)
    assert shared_vocab_size(tok, tok, len(tok), len(tok)) == len(tok)
    assert shared_vocab_size(tok, tok, len(tok), len(tok) + 64) == len(tok)  # padded teacher embedding
    assert shared_vocab_size(tok, tok, len(tok) + 8, len(tok) + 8) == len(tok)  # both padded: still only tokens
    with pytest.raises(ValueError, match=r"differ.*vocab_policy=uld"):
        shared_vocab_size(tok, other, len(tok), len(other))
    assert shared_vocab_size(tok, other, len(tok), len(other), policy="uld") is None
    with pytest.raises(ValueError, match="fewer output rows"):
        shared_vocab_size(tok, tok, len(tok) - 1, len(tok))
