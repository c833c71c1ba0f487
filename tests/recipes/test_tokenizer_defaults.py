"""A model path brings its own tokenizer in every LM command unless tokenizer= says otherwise,
and every command names a model's path the same way (``<model>.path``)."""

import pytest

from divreg.config import load_config
from divreg.recipes.lm_distillation import DistillLMConfig
from divreg.recipes.lm_distillation.cache import CacheTeacherConfig
from divreg.recipes.preference import PreferenceConfig
from divreg.recipes.rl import RLConfig

from . import lm_fixtures


@pytest.fixture
def folders(tmp_path):
    """A model folder that ships its tokenizer, and one of weights alone."""
    model = lm_fixtures.model(seed=0)
    for name, with_tokenizer in (("full", True), ("bare", False)):
        model.model.save_pretrained(tmp_path / name)
        if with_tokenizer:
            lm_fixtures.tokenizer().save_pretrained(tmp_path / name)
    return tmp_path


def test_the_trained_model_brings_its_tokenizer(folders):
    full, bare = str(folders / "full"), str(folders / "bare")
    for schema, key in ((RLConfig, "policy"), (PreferenceConfig, "policy")):
        assert load_config(schema, None, []).tokenizer == "builtin"
        assert load_config(schema, None, [f"{key}.path={full}"]).tokenizer == full
        assert load_config(schema, None, [f"{key}.path={bare}"]).tokenizer == "builtin"  # nothing to bring
        assert load_config(schema, None, [f"{key}.path={full}", "tokenizer=builtin"]).tokenizer == "builtin"
        assert load_config(schema, None, [f"{key}.path={bare}", f"{key}.tokenizer={full}"]).tokenizer == full
    assert load_config(DistillLMConfig, None, []).tokenizer == "builtin"
    assert load_config(DistillLMConfig, None, [f"student.path={full}"]).tokenizer == full
    assert load_config(DistillLMConfig, None, [f"student.path={bare}", f"teacher.path={full}"]).tokenizer == full
    assert load_config(CacheTeacherConfig, None, [f"teacher.path={full}"]).tokenizer == full
    assert load_config(CacheTeacherConfig, None, [f"teacher.path={bare}"]).tokenizer is None  # refused when run


def test_a_model_block_given_a_value_names_its_keys():
    with pytest.raises(ValueError, match=r"teacher is a block of keys \(path, tokenizer, server, members, combine\), not a value: set one of "
                                         r"them, e.g. teacher.path=./my-teacher"):
        load_config(CacheTeacherConfig, None, ["teacher=./my-teacher"])
    with pytest.raises(ValueError, match=r"policy is a block of keys \(path, config, tokenizer\)"):
        load_config(RLConfig, None, ["policy=./my-model"])


def test_cache_teacher_refuses_a_teacher_without_a_tokenizer(folders):
    from divreg.recipes.lm_distillation.cache import run

    with pytest.raises(ValueError, match="ships no tokenizer: give tokenizer="):
        run(load_config(CacheTeacherConfig, None, [f"teacher.path={folders / 'bare'}",
                                                   f"output_dir={folders / 'cache'}"]))
