"""Issue 33 item 2: every checkpoint carries a sha256 of its contents, verified when it is loaded.
A truncated, empty or bit-flipped newest checkpoint is detected: the previous one (kept as
``.prev``) is used with one line on stderr, or, when none is left, the run refuses with one line;
garbage is never loaded."""

import os

import pytest
import torch

from divreg.training import load_if_exists, save_atomic
from divreg.training._checkpoint import CHECKSUM_KEY, CorruptCheckpoint, contents_sha256, load_verified


def _state(value: float) -> dict:
    generator = torch.Generator().manual_seed(int(value))
    return {"model": {"weight": torch.randn(64, 64, generator=generator) + value}, "state": {"step": int(value)},
            "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}}


def flip_bytes(path, count: int = 64, where: float = 0.5) -> None:
    """Invert ``count`` bytes of the file in the middle (at ``where`` of its length)."""
    data = bytearray(open(path, "rb").read())
    start = int(len(data) * where)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


DAMAGE = {
    "flipped": flip_bytes,
    "truncated": lambda path: open(path, "r+b").truncate(os.path.getsize(path) // 2),
    "empty": lambda path: open(path, "wb").close(),
}


def test_the_checksum_covers_the_contents():
    state = _state(1.0)
    assert contents_sha256(state) == contents_sha256(_state(1.0))
    changed = _state(1.0)
    changed["model"]["weight"][3, 7] += 1e-7  # one weight, one ulp-scale change
    assert contents_sha256(changed) != contents_sha256(state)
    changed = _state(1.0)
    changed["state"]["step"] = 2
    assert contents_sha256(changed) != contents_sha256(state)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    path = str(tmp_path / "run.pt")
    save_atomic(_state(1.0), path)
    save_atomic(_state(2.0), path)
    assert load_if_exists(path)["state"]["step"] == 2 and CHECKSUM_KEY not in load_if_exists(path)
    DAMAGE[damage](path)
    with pytest.raises(CorruptCheckpoint):
        load_verified(path)
    capsys.readouterr()
    loaded = load_if_exists(path)
    assert loaded["state"]["step"] == 1 and torch.equal(loaded["model"]["weight"], _state(1.0)["model"]["weight"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resuming from the previous checkpoint" in err[0] and "run.pt.prev" in err[0], err


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_only_checkpoint_is_refused_in_one_line(tmp_path, damage):
    path = str(tmp_path / "run.pt")
    save_atomic(_state(1.0), path)
    DAMAGE[damage](path)
    with pytest.raises(ValueError, match=r"no earlier good checkpoint is left; start the run again with "
                                         r"overwrite=true") as error:
        load_if_exists(path)
    assert "\n" not in str(error.value)


def test_both_damaged_is_refused_and_a_missing_newest_uses_the_previous(tmp_path, capsys):
    path = str(tmp_path / "run.pt")
    save_atomic(_state(1.0), path)
    save_atomic(_state(2.0), path)
    flip_bytes(path)
    flip_bytes(path + ".prev")
    with pytest.raises(ValueError, match="no earlier good checkpoint"):
        load_if_exists(path)
    save_atomic(_state(3.0), str(tmp_path / "other.pt"))
    save_atomic(_state(4.0), str(tmp_path / "other.pt"))
    os.remove(tmp_path / "other.pt")  # killed between the two renames of a write
    assert load_if_exists(str(tmp_path / "other.pt"))["state"]["step"] == 3
    assert "is missing (the run stopped while writing it)" in capsys.readouterr().err


def test_a_checkpoint_without_a_checksum_still_loads(tmp_path):
    """Written by an older divreg: loaded as it is (nothing to verify it by)."""
    torch.save({"state": {"step": 5}}, tmp_path / "old.pt")
    assert load_if_exists(str(tmp_path / "old.pt")) == {"state": {"step": 5}}
