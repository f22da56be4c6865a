"""`vdeploy coverage` and multi-target `vdeploy build`: one load, one export per opset, a table per target."""

from __future__ import annotations


def test_coverage_single_target_table(cli, saved_pt2):
    result = cli("coverage", saved_pt2("vit"), "--target", "onnxruntime-cpu")
    assert result.exit_code == 0, result.stderr
    assert "LayerNormalization" in result.stdout and "native" in result.stdout


def test_coverage_json_counts_and_statuses(cli, saved_pt2):
    result = cli("coverage", saved_pt2("vit"), "--target", "onnxruntime-cpu", "--json")
    assert result.exit_code == 0, result.stderr
    cov = result.json["onnxruntime-cpu"]
    assert cov["unsupported"] == []
    assert set(cov["status"]) == set(cov["ops_before"]) | set(cov["ops_after"])
    assert set(cov["status"].values()) <= {"native", "fused", "decomposed", "fallback", "unsupported", "unknown"}
    assert not any(op.startswith("vdeploy.") for op in cov["ops_after"])


def test_coverage_all_targets_matrix(cli, saved_pt2):
    result = cli("coverage", saved_pt2("vit"), "--target", "all")
    assert "operator coverage by target" in result.stdout
    from vdeploy.targets import load_catalog

    for name in load_catalog().names:
        assert name in result.stdout
    assert result.exit_code == 0, result.stderr  # every target runs it, hailo-8 with ops its documents leave open
    assert "hailo-8: LEGAL (unknown on the target: " in " ".join(result.stdout.split())
    assert "cannot run" not in result.stderr


def test_multi_target_build_writes_one_bundle_each(cli, saved_pt2, tmp_path):
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "x86-cpu",
        "--target",
        "onnxruntime-cpu",
        "--out",
        tmp_path,
        "--iters",
        3,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    manifests = result.json
    assert [m["target"] for m in manifests] == ["x86-cpu", "onnxruntime-cpu"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn-onnxruntime-cpu", "cnn-x86-cpu"]


def test_multi_target_exit_code_is_the_worst(cli, saved_pt2, tmp_path):
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "x86-cpu",
        "--target",
        "onnxruntime-cpu",
        "--out",
        tmp_path,
        "--iters",
        3,
        "--max-latency-ms",
        "0.001",
    )
    assert result.exit_code == 3
    assert "build summary" in result.stdout and result.stdout.count("FAIL") >= 2
