"""Loading a model's state from a user-given file, with actionable errors."""

def test_load_model_state_accepts_both_forms_and_names_what_differs(tmp_path):
    import pytest
    import torch

    from divreg.training import load_model_state

    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    torch.save({"model": source.state_dict(), "step": 4}, tmp_path / "checkpoint.pt")
    for name in ("bare.pt", "checkpoint.pt"):
        torch.nn.init.zeros_(target.weight)
        load_model_state(target, str(tmp_path / name), "teacher_checkpoint")
        assert torch.equal(target.weight, source.weight)
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match=r"other shapes \[.weight: \(2, 4\) vs \(2, 3\).\]\); set the model's settings"):
        load_model_state(target, str(tmp_path / "wider.pt"), "teacher_checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_model_state(target, str(tmp_path / "list.pt"), "teacher_checkpoint")
