"""Arm targets on their real toolchains (arm venv: Vela 5.2.0, litert-torch, ai-edge-quantizer, LiteRT, ExecuTorch).

golden ViT / MobileViT hybrid / BN CNN --vdeploy build--> ethos-u55-128 bundle: Vela accepted the fully INT8 TFLite,
  placement/cycles/SRAM reported, LiteRT INT8 numerics within the target's gate; our op-profile coverage agrees with
  Vela's placement. x86-cpu-xnnpack / arm-cortex-a76-xnnpack: the .pte of each matches PyTorch within the FP32 gate.
Needs `vdeploy toolchain install arm` (make toolchains); nothing here is mocked.
"""

from __future__ import annotations

import pytest

from vdeploy.backends import toolchains
from vdeploy.targets import load_catalog

GOLDEN = ("vit", "mobilevit", "cnn")
# Two exact rewrites of the program before litert-torch (toolchain_workers/vela_lowering.py) keep every golden op on
# the NPU: the global-average-pool mean(dim=(2, 3)) becomes avg_pool2d (litert-torch left that MEAN channel-first,
# so Vela saw a depth reduction and put it on the CPU), and attention's 5-D qkv permute is split per q/k/v (with
# MobileViT's 4 patch positions as batch it was a true 5-D TRANSPOSE, on which Vela 5.2.0 crashed with SIGSEGV).
LOWERING = {
    "vit": {"permute_5d_split": 2},  # batch 1: a 5-D TRANSPOSE with a unit dim, which Vela took; split all the same
    "cnn": {"global_mean_to_avg_pool": 1},
    "mobilevit": {"global_mean_to_avg_pool": 1, "permute_5d_split": 2},
}

pytestmark = pytest.mark.skipif(
    not toolchains.installed("arm"), reason="the arm toolchain is not installed: run `vdeploy toolchain install arm`"
)


@pytest.fixture(scope="module")
def ethos_builds(saved_pt2, tmp_path_factory):
    from typer.testing import CliRunner

    from vdeploy.cli import app

    out = tmp_path_factory.mktemp("ethos")
    results = {}
    for name in GOLDEN:
        run = CliRunner().invoke(
            app,
            ["build", str(saved_pt2(name)), "--target", "ethos-u55-128", "--out", str(out), "--json"],
            catch_exceptions=False,
        )
        results[name] = (run.exit_code, run.stdout, run.stderr, out / f"{name}-ethos-u55-128")
    return results


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_model_builds_for_ethos_u55_through_vela(ethos_builds, name):
    import json

    code, stdout, stderr, bundle = ethos_builds[name]
    assert code == 0, stderr
    manifest = json.loads(stdout)
    details = manifest["artifact"]["details"]
    for f in ("model_vela.tflite", "model_int8.tflite", "vela_summary.csv", "HANDOFF.txt"):
        assert (bundle / f).stat().st_size > 0, f
    assert (bundle / "model_vela.tflite").read_bytes()[4:8] == b"TFL3"
    estimate = details["estimate"]
    assert estimate["source"] == "vela-estimate" and estimate["cycles"] > 0 and estimate["sram_kb"] > 0
    assert manifest["measured"]["latency_ms"]["source"] == "vela-estimate"
    assert manifest["measured"]["latency_ms"]["p50"] == pytest.approx(estimate["latency_ms"])
    placement = details["placement"]
    assert placement["source"] == "vela" and sum(placement["counts"].values()) == len(placement["layers"])
    # the goal: every op on the NPU (the ViT as the probe reached; the CNN and MobileViT after the rewrites)
    assert placement["counts"]["CPU"] == 0 and estimate["npu_share_pct"] == 100.0, placement["counts"]
    assert details["quantization"]["lowering"] == LOWERING.get(name, {})
    # numerics of the fully INT8 .tflite (LiteRT on this host) judged with the target's INT8 gate
    numerics, gate = manifest["numerics"], manifest["budgets"]["numerics"]
    assert numerics["outputs_from"].startswith("litert-interpreter")
    assert numerics["cosine"] >= gate["min_cosine"] and numerics["rel_err"] <= gate["max_rel_err"]
    assert not manifest["violations"] and manifest["verdict"] == "unverified"  # Vela's estimate never passes alone


@pytest.mark.parametrize("name", GOLDEN)
def test_ethos_op_profile_predicts_velas_placement(ethos_builds, name):
    """Ops our coverage sends to the Cortex-M are the ops Vela leaves on the CPU: none (the class-token pick x[:, 0]
    exports as a constant Gather, which legalization makes the Slice Vela runs as STRIDED_SLICE)."""
    import json

    code, stdout, stderr, _ = ethos_builds[name]
    assert code == 0, stderr
    manifest = json.loads(stdout)
    vela_cpu = {lay["op"] for lay in manifest["artifact"]["details"]["placement"]["layers"] if lay["device"] == "CPU"}
    ours = set(manifest["coverage"]["fallback"])
    assert not vela_cpu, [
        (lay["op"], lay["reason"])
        for lay in manifest["artifact"]["details"]["placement"]["layers"]
        if lay["device"] == "CPU"
    ]
    assert not ours, f"profile predicts CPU ops Vela runs on the NPU: {ours}"


def test_ethos_targets_in_catalogue_are_int8_only():
    catalog = load_catalog()
    for name in ("ethos-u55-128", "ethos-u65-256", "ethos-u85-256"):
        spec = catalog.get(name).spec
        assert [p.value for p in spec.precisions] == ["int8"] and spec.backend == "ethos_u"
    assert catalog.get("ethos-u55").name == "ethos-u55-128"


@pytest.mark.parametrize(
    "name, target", [("vit", "x86-cpu-xnnpack"), ("mobilevit", "x86-cpu-xnnpack"), ("cnn", "arm-cortex-a76-xnnpack")]
)
def test_xnnpack_pte_matches_pytorch_within_fp32_gate(cli, saved_pt2, tmp_path, name, target):
    """The .pte runs in the x86 ExecuTorch runtime (arm venv); the aarch64 target's host timing does not count."""
    result = cli("build", saved_pt2(name), "--target", target, "--out", tmp_path, "--json", "--iters", 5)
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    bundle = tmp_path / f"{name}-{target}"
    assert (bundle / "model.pte").stat().st_size > 0 and (bundle / "run_pte.py").is_file()
    numerics, gate = manifest["numerics"], manifest["budgets"]["numerics"]
    assert gate["max_rel_err"] == 1.0e-4  # the FP32 gate
    assert numerics["rel_err"] <= gate["max_rel_err"] and numerics["cosine"] >= gate["min_cosine"]
    assert manifest["artifact"]["details"]["placement"]["delegate_calls"] >= 1
    if target == "x86-cpu-xnnpack":
        assert manifest["measured"]["latency_ms"]["runs"] == 5  # the x86 twin's host timing counts
    else:
        assert manifest["measured"]["latency_ms"] is None and "aarch64" in manifest["reason"]["latency_ms"]


def test_default_arm_cpu_target_is_executorch_xnnpack():
    """rpi5 / arm name the XNNPACK target (it beat TVM tuned in benchmarks/arm_cpu_runtimes.py); TVM stays by name."""
    catalog = load_catalog()
    assert catalog.get("rpi5").name == catalog.get("arm").name == "arm-cortex-a76-xnnpack"
    assert catalog.get("arm-cortex-a76").spec.backend == "tvm"
