"""The classifier-distillation recipe end to end: outputs, data sources, models, the teacher
checkpoint, two processes vs one, and exact resume after a real SIGKILL."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from divreg.config import load_config
from divreg.data import load_classification_data
from divreg.recipes.classifier_distillation import DistillClassifierConfig, run

from ..launch import accelerate_prefix, kill_at_checkpoint

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)

METRIC_KEYS = {"accuracy", "nll", "brier", "ece", "aurc", "e_aurc"}
TINY = ["teacher_epochs=2", "epochs=2", "seeds=[0]", "checkpoint_every=0", "teacher.widths=[8,8]", "student.widths=[4,4]",
        "min_steps=0"]


def _config(tmp_path, *overrides):
    return load_config(DistillClassifierConfig, None, [f"output_dir={tmp_path}", *TINY, *overrides])


def test_run_writes_config_metrics_logs_plots_and_checkpoints(tmp_path, capsys):
    methods = "[ce,kd_forward_kl,kd_tv,sinkd,pskd,label_smoothing,two_view]"
    config = _config(tmp_path, f"methods={methods}", "seeds=[0,1]")
    summary = run(config)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == summary
    assert list(saved) == ["teacher", "ce", "kd_forward_kl", "kd_tv", "sinkd", "pskd", "label_smoothing", "two_view"]
    for entry in saved.values():
        assert set(entry) == METRIC_KEYS
        assert all(set(v) == {"mean", "std"} and np.isfinite(v["mean"]) for v in entry.values())
        assert 0.0 <= entry["accuracy"]["mean"] <= 1.0
    assert saved["teacher"]["accuracy"]["std"] == 0.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 + 7 * 2 * 2  # teacher epochs + methods x seeds x epochs
    assert {"run", "method", "seed", "epoch", "train_loss", "test_accuracy", "test_ece"} <= set(records[-1])
    for name in ("reliability.png", "metrics.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 5_000
    assert load_config(DistillClassifierConfig, str(tmp_path / "config.yaml")) == config
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 1 + 7 * 2
    assert "| method" in capsys.readouterr().out


def test_npz_features_train_an_mlp_and_datasets_folders_load(tmp_path):
    digits = load_classification_data("digits")
    flat = {key: value.flatten(1).numpy() if key.startswith("x") else value.numpy()
            for key, value in (("x_train", digits.x_train), ("y_train", digits.y_train),
                               ("x_test", digits.x_test), ("y_test", digits.y_test))}
    path = tmp_path / "digits.npz"
    np.savez(path, **flat)
    summary = run(_config(tmp_path / "npz", f"data={path}", "methods=[kd_forward_kl]"))
    assert set(summary) == {"teacher", "kd_forward_kl"}
    state = torch.load(tmp_path / "npz" / "checkpoints" / "teacher.pt", weights_only=False)
    assert state["model"]["net.1.weight"].shape == (8, 64)  # auto picked the MLP: Flatten, Linear(64 -> 8)

    import datasets

    folder = tmp_path / "hf"
    raw = np.asarray(flat["x_train"]).reshape(-1, 8, 8)
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": raw[:400].tolist(), "label": flat["y_train"][:400].tolist()}),
        "test": datasets.Dataset.from_dict({"image": raw[400:600].tolist(), "label": flat["y_train"][400:600].tolist()}),
    }).save_to_disk(str(folder))
    loaded = load_classification_data(str(folder))
    assert loaded.x_train.shape == (400, 1, 8, 8) and loaded.x_test.shape == (200, 1, 8, 8)
    tabular = tmp_path / "tabular"
    datasets.Dataset.from_dict({"a": [0.0, 1.0, 2.0, 3.0] * 5, "b": [1.0, 0.0, 1.0, 0.0] * 5,
                                "label": [0, 1, 0, 1] * 5}).save_to_disk(str(tabular))
    loaded = load_classification_data(str(tabular), test_fraction=0.25)
    assert loaded.x_train.shape == (15, 2) and loaded.x_test.shape == (5, 2) and loaded.num_classes == 2


def test_dotted_model_path_and_teacher_checkpoint(tmp_path):
    first = _config(tmp_path / "a", "methods=[ce]")
    run(first)
    teacher_path = tmp_path / "a" / "checkpoints" / "teacher.pt"
    second = _config(tmp_path / "b", "methods=[kd_jsd]", f"teacher_checkpoint={teacher_path}",
                     "student.kind=divreg.models.MLP")
    summary = run(second)
    first_summary = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert summary["teacher"] == first_summary["teacher"]  # the same teacher, loaded not retrained
    assert not (tmp_path / "b" / "checkpoints" / "teacher.pt").exists()


def test_bad_inputs_are_clear(tmp_path):
    for overrides, message in [(["methods=[kd_nope]"], "methods: unknown method 'kd_nope'"),
                               (["methods=[]"], "methods must list"), (["kd_weight=2"], "kd_weight"),
                               (["seeds=[1,1]"], "seeds"), (["sinkd.epsilon=0"], "sinkd.epsilon"),
                               (["epochs=0"], "epochs must be > 0")]:
        with pytest.raises(ValueError, match=message):
            _config(tmp_path, *overrides)
    with pytest.raises(ValueError, match="does not exist"):
        load_classification_data(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="lacks the arrays"):
        load_classification_data(str(tmp_path / "partial.npz"))
    with pytest.raises(ValueError, match="model 'cnn' needs image inputs"):
        np.savez(tmp_path / "flat.npz", x_train=np.random.rand(80, 3), y_train=np.arange(80) % 2,
                 x_test=np.random.rand(20, 3), y_test=np.arange(20) % 2)
        run(_config(tmp_path / "c", f"data={tmp_path / 'flat.npz'}", "student.kind=cnn", "methods=[ce]"))
    assert not (tmp_path / "c").exists()  # found before the teacher trained (or anything was written)
    with pytest.raises(ValueError, match="cannot import model 'nope.Net'"):
        run(_config(tmp_path / "e", "student.kind=nope.Net", "methods=[ce]"))
    assert not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match="batch_size=4096 exceeds"):
        run(_config(tmp_path / "d", "batch_size=4096", "methods=[ce]"))


def _launch(arguments, processes=1):
    if processes == 1:
        command = [sys.executable, "-m", "divreg.cli", "distill-classifier", *arguments]
    else:
        command = [*accelerate_prefix(processes), "-m", "divreg.cli", "distill-classifier", *arguments]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.alone  # two processes or a Ray cluster: make test runs it after the parallel tier
def test_two_processes_match_one_process_for_the_same_global_batch(tmp_path):
    arguments = ["methods=[ce,kd_forward_kl,pskd,two_view]", "teacher_epochs=3", "epochs=3", "seeds=[0]",
                 "batch_size=64", "min_steps=0"]
    one = _launch([f"output_dir={tmp_path / 'one'}", *arguments])
    two = _launch([f"output_dir={tmp_path / 'two'}", *arguments], processes=2)
    outputs = [process.communicate(timeout=300) for process in (one, two)]
    for process, (out, err) in zip((one, two), outputs):
        assert process.returncode == 0, err[-3000:]
    assert "2 process(es)" in outputs[1][0] and "1 process(es)" in outputs[0][0]
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for method in single:
        # same data, same global batches, the same augmentation noise per example (two_view), gradients
        # averaged over the two halves: only the floating-point summation order differs (measured:
        # equal accuracy, NLL within 3e-7 relative); one test prediction may flip on a near-tie
        assert abs(single[method]["accuracy"]["mean"] - double[method]["accuracy"]["mean"]) <= 1 / 539
        assert abs(single[method]["nll"]["mean"] - double[method]["nll"]["mean"]) <= 1e-5 * single[method]["nll"]["mean"]


def _final_weights(directory):
    return {path.name: torch.load(path, weights_only=False)["model"] for path in sorted(directory.glob("*.pt"))}


def test_resume_after_sigkill_gives_bitwise_identical_weights(tmp_path):
    arguments = ["methods=[pskd,kd_forward_kl]", "seeds=[0]", "teacher_epochs=2", "epochs=8", "checkpoint_every=5",
                 "teacher.widths=[8,8]", "student.widths=[4,4]", "min_steps=0"]
    reference = _launch([f"output_dir={tmp_path / 'reference'}", *arguments])
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    killed_dir = tmp_path / "killed"
    victim = _launch([f"output_dir={killed_dir}", *arguments])
    # a mid-epoch checkpoint of a student, not in its first epoch (19 steps per epoch: 1258 // 64)
    kill_at_checkpoint(victim, killed_dir / "checkpoints" / "pskd-seed0.pt",
                       lambda c: not c["state"]["done"] and c["state"]["step"] % 19 > 0 and c["state"]["step"] > 19)

    resumed = _launch([f"output_dir={killed_dir}", *arguments, "resume=true"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    expected, got = _final_weights(tmp_path / "reference" / "checkpoints"), _final_weights(killed_dir / "checkpoints")
    assert expected.keys() == got.keys() == {"teacher.pt", "pskd-seed0.pt", "kd_forward_kl-seed0.pt"}
    for name in expected:
        for key, tensor in expected[name].items():
            assert torch.equal(tensor, got[name][key]), (name, key)
    assert json.loads((tmp_path / "reference" / "metrics.json").read_text()) == json.loads(
        (killed_dir / "metrics.json").read_text())


def test_default_methods_reach_logistic_regression_on_a_small_table(tmp_path, capsys):
    """A 13-feature, 3-class table with 126 training rows (as small as the wine data): with the
    default settings an epoch is one optimizer step, so min_steps raises the epochs (with a
    notice) and every default student gets near the accuracy of logistic regression."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=180, n_features=13, n_informative=6, n_redundant=2, n_classes=3,
                               n_clusters_per_class=1, class_sep=1.5, random_state=0)
    x = x * np.logspace(-1, 3, 13)  # columns on very different scales, like the wine table's
    x_train, y_train, x_test, y_test = x[:126], y[:126], x[126:], y[126:]
    np.savez(tmp_path / "table.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    mean, std = x_train.mean(0), x_train.std(0)
    reference = LogisticRegression(max_iter=5000).fit((x_train - mean) / std, y_train).score((x_test - mean) / std, y_test)
    summary = run(load_config(DistillClassifierConfig, None, [f"data={tmp_path / 'table.npz'}", "seeds=[0]",
                                                              f"output_dir={tmp_path / 'out'}", "checkpoint_every=0"]))
    defaults = DistillClassifierConfig()
    out = capsys.readouterr().out
    assert (f"notice: epochs={defaults.epochs} would be {defaults.epochs} optimizer steps on 126 training examples"
            f" (batch 64); training {defaults.min_steps} epochs") in out
    assert reference >= 0.85
    for method, metrics in summary.items():
        assert metrics["accuracy"]["mean"] >= reference - 0.06, (method, metrics["accuracy"]["mean"], reference)


def test_lelp_trains_a_subclass_student_and_reports_class_probabilities(tmp_path):
    """lelp (LELP, arXiv 2409.20449): the student has S outputs per class, is trained toward the
    teacher's pseudo-subclass target and is evaluated on its class probabilities (the sum of each
    class's subclasses); its options are checked before any training."""
    np.random.seed(0)
    x = np.random.rand(200, 1, 8, 8).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)  # binary
    np.savez(tmp_path / "binary.npz", x_train=x[:150], y_train=y[:150], x_test=x[150:], y_test=y[150:])
    summary = run(_config(tmp_path / "run", f"data={tmp_path / 'binary.npz'}", "methods=[ce, lelp]",
                          "teacher.widths=[8,16]"))
    assert 0.0 <= summary["lelp"]["accuracy"]["mean"] <= 1.0 and summary["lelp"]["nll"]["mean"] > 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "lelp-seed0.pt", weights_only=False)["model"]
    head = [value for name, value in state.items() if name.endswith("weight")][-1]
    assert head.shape[0] == 2 * 10  # C * S outputs
    for overrides, message in [(["methods=[{name: l, kind: lelp, options: {subclasses: 0}}]"], "subclasses must be"),
                               (["methods=[{name: l, kind: lelp, options: {beta: 0}}]"], "beta must be"),
                               (["methods=[{name: l, kind: lelp, options: {rotate: 1}}]"], "rotate must be true"),
                               (["methods=[{name: l, kind: lelp, options: {k: 1}}]"], "takes")]:
        with pytest.raises(ValueError, match=message):
            _config(tmp_path, *overrides)
    with pytest.raises(ValueError, match="exceeds the teacher's embedding width 16"):
        run(_config(tmp_path / "wide", f"data={tmp_path / 'binary.npz'}", "teacher.widths=[8,16]",
                    "methods=[{name: l, kind: lelp, options: {subclasses: 17}}]"))
    assert not (tmp_path / "wide").exists()


def test_hard_learns_an_augmentor_that_raises_disagreement_and_resumes_its_state(tmp_path):
    """hard (HARD, arXiv 2305.14890): one augmentor step raises the teacher-student disagreement
    on the augmented batch; the random baseline draws the same transforms for the same seed; the
    augmentor's weights and optimizer state round-trip through the method's state dict; non-image
    inputs are refused before training."""
    import torch.nn.functional as F

    from divreg.recipes.classifier_distillation.config import ClassifierMethod
    from divreg.recipes.classifier_distillation.methods import Batch, make_method
    from divreg.models import build_classifier

    data = load_classification_data("digits")
    torch.manual_seed(0)
    teacher, student = (build_classifier("cnn", widths, data.input_shape, data.num_classes) for widths in
                        ([8, 16], [4, 8]))
    spec = ClassifierMethod(name="hard", kind="hard", divergence="forward_kl", weight=0.9, temperature=4.0,
                            options={"teacher_weight": 0.0})  # the disagreement term alone
    method = make_method(spec, data, 1, teacher, seed=0)
    batch = Batch(data.x_train[:64], data.y_train[:64], torch.arange(64), 0, list(range(64)))

    def disagreement():
        with torch.no_grad():
            x = method.augmentor(batch.x)
            return float(F.kl_div(torch.log_softmax(student(x), -1), torch.log_softmax(teacher(x), -1),
                                  log_target=True, reduction="batchmean"))

    before = disagreement()
    for _ in range(10):
        method._augment(student, batch)
    assert disagreement() > before
    state = method.state_dict()
    fresh = make_method(spec, data, 1, teacher, seed=0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.augmentor(batch.x), method.augmentor(batch.x))
    random_spec = ClassifierMethod(name="r", kind="hard", divergence="forward_kl", weight=0.9,
                                   options={"augmentor": "random"})
    a, b = (make_method(random_spec, data, 1, teacher, seed=0) for _ in range(2))
    assert torch.equal(a._augment(student, batch), b._augment(student, batch))
    assert not torch.equal(a._augment(student, batch), batch.x)
    np.savez(tmp_path / "flat.npz", x_train=np.random.rand(80, 3), y_train=np.arange(80) % 2,
             x_test=np.random.rand(20, 3), y_test=np.arange(20) % 2)
    with pytest.raises(ValueError, match="needs image inputs"):
        run(_config(tmp_path / "flat", f"data={tmp_path / 'flat.npz'}", "student.kind=mlp", "teacher.kind=mlp",
                    "methods=[{name: h, kind: hard, divergence: forward_kl}]"))
    with pytest.raises(ValueError, match="augmentor must be"):
        _config(tmp_path, "methods=[{name: h, kind: hard, divergence: forward_kl, options: {augmentor: x}}]")


def test_a_bit_flipped_checkpoint_is_detected_on_resume_and_the_run_still_ends_bitwise_equal(tmp_path):
    """Issue 33 item 2, the reported case: a classifier run killed mid-training, 64 bytes flipped
    in the middle of its newest student checkpoint, then resume=true. The damage is detected, the
    run resumes from the previous checkpoint (one line on stderr) and ends with the weights of an
    uninterrupted run, bitwise."""
    from ..training.test_corrupt_checkpoints import flip_bytes

    arguments = ["methods=[pskd]", "seeds=[0]", "teacher_epochs=2", "epochs=6", "checkpoint_every=5",
                 "teacher.widths=[8,8]", "student.widths=[4,4]", "min_steps=0"]
    reference = _launch([f"output_dir={tmp_path / 'reference'}", *arguments])
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    for attempt in range(3):  # a kill that lands between a write's two renames leaves no newest file: again
        killed_dir = tmp_path / f"killed{attempt}"
        latest = killed_dir / "checkpoints" / "pskd-seed0.pt"
        victim = _launch([f"output_dir={killed_dir}", *arguments])
        kill_at_checkpoint(victim, latest, lambda c: not c["state"]["done"] and c["state"]["step"] >= 30)
        if latest.exists():
            break
    assert (killed_dir / "checkpoints" / "pskd-seed0.pt.prev").exists()
    flip_bytes(latest)
    resumed = _launch([f"output_dir={killed_dir}", *arguments, "resume=true"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    notices = [line for line in err.splitlines() if "resuming from the previous checkpoint" in line]
    assert len(notices) == 1 and "differ from the checksum" in notices[0], err[-2000:]
    expected, got = _final_weights(tmp_path / "reference" / "checkpoints"), _final_weights(killed_dir / "checkpoints")
    for name in expected:
        for key, tensor in expected[name].items():
            assert torch.equal(tensor, got[name][key]), (name, key)
