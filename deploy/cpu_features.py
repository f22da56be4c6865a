"""Can this CPU run OpenVINO's bf16 (or int8) kernels? Ask a child process, so a SIGILL cannot kill the caller.

probe_bf16() -> CPU flags (no avx512_bf16/amx_bf16: no) -> child: tiny Conv+MatMul model, INFERENCE_PRECISION_HINT
bf16, one inference checked against numpy -> died with SIGILL (AMX `tilezero` on hosts that do not grant AMX)? ->
retry with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 (bf16 without AMX) -> PrecisionSupport(ok, isa_cap, reason, attempts).
The caller runs bf16 work with `support.env()` in the environment of the process that runs it (the variable must
be set before the runtime loads). probe_int8() does the same for FakeQuantize'd (INT8) models, capped at
AVX512_CORE_VNNI.

Run `python -m vdeploy.cpu_features` to see what this host does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ISA_ENV = "ONEDNN_MAX_CPU_ISA"
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
FALLBACK_CAP = {"bf16": "AVX512_CORE_BF16", "int8": "AVX512_CORE_VNNI"}  # the ISA below AMX for each precision
MAX_REL_ERR = {"bf16": 5e-2, "int8": 1e-1}  # vs an FP32 numpy reference on the probe model


@dataclass(frozen=True)
class ProbeAttempt:
    isa_cap: str | None  # the ONEDNN_MAX_CPU_ISA value tried (None: the runtime's default)
    outcome: str  # "ok" | "signal" | "error" | "timeout" | "wrong"
    detail: str


@dataclass(frozen=True)
class PrecisionSupport:
    ok: bool
    isa_cap: str | None  # set this as ONEDNN_MAX_CPU_ISA for bf16 work (None: no cap needed, or not ok)
    reason: str
    precision: str = "bf16"
    inference_precision: str | None = None  # what the compiled model reported using
    attempts: tuple[ProbeAttempt, ...] = ()

    def env(self) -> dict[str, str]:
        return {ISA_ENV: self.isa_cap} if self.ok and self.isa_cap else {}

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "ok": self.ok,
            "isa_cap": self.isa_cap,
            "reason": self.reason,
            "inference_precision": self.inference_precision,
            "attempts": [a.__dict__ for a in self.attempts],
        }


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def probe_bf16(timeout_s: float = 120.0) -> PrecisionSupport:
    return probe("bf16", timeout_s)


def probe_int8(timeout_s: float = 120.0) -> PrecisionSupport:
    return probe("int8", timeout_s)


def probe(precision: str, timeout_s: float = 120.0) -> PrecisionSupport:
    """Run the probe model at `precision` ("bf16" | "int8") in a child process; on a crashing signal retry once
    with the ISA capped below AMX. Never raises for the probe's own failure: the result says what happened."""
    if precision not in FALLBACK_CAP:
        raise ValueError(f"precision must be one of {sorted(FALLBACK_CAP)}, not {precision!r}")
    flags = cpu_flags()
    needed = BF16_FLAGS if precision == "bf16" else INT8_FLAGS
    if flags and not flags & needed:
        reason = f"CPU lacks {' / '.join(sorted(needed))}: no native {precision}"
        return PrecisionSupport(False, None, reason, precision)
    attempts = []
    for cap in (None, FALLBACK_CAP[precision]):
        attempt, used = _attempt(precision, cap, timeout_s)
        attempts.append(attempt)
        if attempt.outcome == "ok":
            how = (
                "with the runtime's default ISA"
                if cap is None
                else f"with {ISA_ENV}={cap}: the default ISA died ({attempts[0].detail})"
            )
            return PrecisionSupport(True, cap, f"{precision} inference ran {how}", precision, used, tuple(attempts))
        if attempt.outcome != "signal":
            break  # an error or a wrong answer: a lower ISA will not fix it
    last = attempts[-1]
    return PrecisionSupport(
        False, None, f"{precision} probe failed: {last.outcome}: {last.detail}", precision, None, tuple(attempts)
    )


def _attempt(precision: str, cap: str | None, timeout_s: float) -> tuple[ProbeAttempt, str | None]:
    env = {k: v for k, v in os.environ.items() if k != ISA_ENV}
    if cap:
        env[ISA_ENV] = cap
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vdeploy.cpu_features", "--child", precision],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return ProbeAttempt(cap, "timeout", f"no answer within {timeout_s:.0f} s"), None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return ProbeAttempt(cap, "signal", f"child died with {name}"), None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeAttempt(cap, "error", f"exit {proc.returncode}: {last[:200]}"), None
    result = json.loads(lines[-1])
    detail = (
        f"max rel err {result['rel_err']:.2e}, compiled as {result['precision']}, "
        f"kernels {', '.join(result.get('kernels', [])) or '?'}"
    )
    outcome = "ok" if result["rel_err"] <= MAX_REL_ERR[precision] else "wrong"
    return ProbeAttempt(cap, outcome, detail), result["precision"]


# ---- child side ---------------------------------------------------------------------------------------------


def _child(precision: str) -> None:
    """Build Conv(3x3, 64ch, 56x56) -> Relu -> MatMul(3136x64 @ 64x512) (FakeQuantize'd for int8), compile,
    infer once, print {"rel_err", "precision"}. Big enough for oneDNN to pick its AMX/brgemm kernels."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    a = (rng.standard_normal((512, 64)) / 8).astype(np.float32)

    def fq(node, bound: float):
        lo, hi = ops.constant(np.float32(-bound)), ops.constant(np.float32(bound))  # symmetric 8-bit
        return ops.fake_quantize(node, lo, hi, lo, hi, 256) if precision == "int8" else node

    conv_ref = np.zeros((64, 56, 56), np.float32)
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            conv_ref += np.einsum("oc,chw->ohw", w[:, :, i, j], padded[:, i : i + 56, j : j + 56])
    hidden = np.maximum(conv_ref, 0).reshape(64, -1)
    ref = hidden.T @ a.T  # (3136, 512): activations x constant weights, a FullyConnected for the CPU plugin

    param = ops.parameter(list(x.shape), np.float32, name="x")
    conv = ops.convolution(
        fq(param, np.abs(x).max()), fq(ops.constant(w), np.abs(w).max()), [1, 1], [1, 1], [1, 1], [1, 1]
    )
    flat = ops.reshape(ops.relu(conv), ops.constant(np.array([64, 56 * 56], np.int64)), False)
    out = ops.matmul(fq(flat, hidden.max()), fq(ops.constant(a), np.abs(a).max()), True, True)
    hint = "bf16" if precision == "bf16" else "f32"
    compiled = ov.Core().compile_model(ov.Model([out], [param]), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    got = compiled({0: x})[0]
    rel_err = float(np.abs(got - ref).max() / np.abs(ref).max())
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    print(json.dumps({"rel_err": rel_err, "precision": used, "kernels": sorted(_kernels(compiled))}), flush=True)


def _kernels(compiled) -> set[str]:
    """'Type:primitive@precision' of the Conv/MatMul nodes OpenVINO's CPU plugin actually runs."""
    found = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def field(key, info=info):
            return info[key].astype(str) if key in info else "?"

        if field("layerType") in ("Convolution", "FullyConnected", "MatMul"):
            found.add(f"{field('layerType')}:{field('primitiveType')}@{field('runtimePrecision')}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--child":
        _child(argv[1])
        return 0
    for precision in ("bf16", "int8"):
        print(json.dumps(probe(precision).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
