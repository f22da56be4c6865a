"""--eval-data / --max-top1-drop: labelled top-1 of the artifact beside the FP32 reference, on real data (digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.digits import trained_digits


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    trained = trained_digits("cnn")
    x_test = trained.x_test.numpy() if hasattr(trained.x_test, "numpy") else np.asarray(trained.x_test)
    labels = trained.y_test.numpy() if hasattr(trained.y_test, "numpy") else np.asarray(trained.y_test)
    x_train = trained.x_train.numpy() if hasattr(trained.x_train, "numpy") else np.asarray(trained.x_train)
    program = torch.export.export(trained.model, (torch.from_numpy(x_test[:1]),))
    torch.export.save(program, str(tmp / "digits_cnn.pt2"))
    np.savez(tmp / "eval.npz", inputs=x_test, labels=labels)
    np.save(tmp / "calib.npy", x_train[:128])
    return tmp, trained.accuracy


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "x86-cpu"])
def test_int8_top1_drop_is_measured_and_gated(cli, digits_files, tmp_path, target):
    files, fp32_accuracy = digits_files
    result = cli(
        "build",
        files / "digits_cnn.pt2",
        "--target",
        target,
        "--precision",
        "int8",
        "--out",
        tmp_path,
        "--calib",
        files / "calib.npy",
        "--eval-data",
        files / "eval.npz",
        "--max-top1-drop",
        "1.0",
        "--iters",
        3,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    accuracy = result.json["accuracy"]
    assert accuracy["samples"] == 450
    assert accuracy["reference_top1"] == pytest.approx(100 * fp32_accuracy, abs=0.01)  # PyTorch on the same data
    assert accuracy["top1_drop_pt"] <= 1.0 and accuracy["artifact_top1"] > 90


def test_zero_drop_gate_holds_for_fp32_is_kept_by_validate_and_is_unverified_without_data(cli, digits_files, tmp_path):
    files, _ = digits_files
    args = (
        "build",
        files / "digits_cnn.pt2",
        "--target",
        "onnxruntime-cpu",
        "--out",
        tmp_path,
        "--iters",
        3,
        "--json",
        "--eval-data",
        files / "eval.npz",
    )
    exact = cli(*args, "--max-top1-drop", "0")
    assert exact.exit_code == 0 and exact.json["accuracy"]["top1_drop_pt"] == 0  # FP32 ORT == PyTorch labels
    assert exact.json["verdict"] == "pass"
    validated = cli("validate", tmp_path / "digits_cnn-onnxruntime-cpu", "--json", "--iters", 3)
    assert validated.exit_code == 0 and validated.json["verdict"] == "pass", validated.json["reason"]
    unverified = cli(
        "build",
        files / "digits_cnn.pt2",
        "--target",
        "onnxruntime-cpu",
        "--out",
        tmp_path / "u",
        "--iters",
        3,
        "--json",
        "--max-top1-drop",
        "0.5",
    )
    assert unverified.json["verdict"] == "unverified"
    assert any(u.startswith("max_top1_drop:") for u in unverified.json["reason"]["unverified"])


def test_eval_data_without_labels_is_a_clear_error(cli, digits_files, tmp_path):
    files, _ = digits_files
    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=np.zeros((4, 1, 8, 8), np.float32))
    out = tmp_path / "out"
    result = cli(
        "build", files / "digits_cnn.pt2", "--target", "onnxruntime-cpu", "--out", out, "--json", "--eval-data", bad
    )
    assert result.exit_code == 1 and "labels" in result.stderr and not out.exists()
