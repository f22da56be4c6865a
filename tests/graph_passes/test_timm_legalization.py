"""Legalization x every target x real timm architectures (deit_tiny, swin_tiny, mobilevit_xs), exported both ways.

For each export: canonicalize as the pipeline does, legalize for every target's op set, then check the
post-condition (only the op set, or the listed fallback, remains; nothing internal) and the numerics against the
canonical graph in ONNX Runtime with optimisations off.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vdeploy.export import export_onnx
from vdeploy.graph_passes.canonicalize import canonicalize
from vdeploy.load import InputSpec, LoadedModel, ModelFormat
from vdeploy.pipeline import legalize_for
from vdeploy.targets import OpId, load_catalog
from vdeploy.timm_compat import import_timm

pytestmark = pytest.mark.slow
ARCHS = {"deit_tiny_patch16_224": 224, "swin_tiny_patch4_window7_224": 224, "mobilevit_xs": 256}
EXPORTS = {"dynamo18": 18, "legacy17": 17}
TARGETS = [t for t in load_catalog()]
REL_TOL = 1e-4  # exact rewrites; approximating rules widen it to 10x their documented error (relative to output)


@pytest.fixture(scope="module")
def canonical_exports():
    timm = import_timm()
    cache = {}

    def get(arch: str, export: str):
        if (arch, export) not in cache:
            torch.manual_seed(0)
            module = timm.create_model(arch, pretrained=False).eval()
            size = ARCHS[arch]
            loaded = LoadedModel(
                f"timm:{arch}", arch, ModelFormat.timm, None, (InputSpec("input", (1, 3, size, size)),), module=module
            )
            if export.startswith("legacy"):  # the pipeline sends TorchScript through the legacy exporter
                loaded = LoadedModel(loaded.source, arch, ModelFormat.torchscript, None, loaded.inputs, module=module)
            x = torch.randn(1, 3, size, size)
            result = export_onnx(loaded, (x,), EXPORTS[export])
            assert result.exporter == export[:-2], result.notes
            cache[arch, export] = (canonicalize(result.model).model, x.numpy())
        return cache[arch, export]

    return get


def run(model, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("export", list(EXPORTS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_target_legalizes_real_architectures(canonical_exports, arch, export):
    canonical, x = canonical_exports(arch, export)
    expected = run(canonical, x)
    scale = float(np.abs(expected).max())
    for target in TARGETS:
        legal, coverage = legalize_for(canonical, target)
        ops = {OpId(n.domain, n.op_type) for n in legal.graph.node}
        assert not any(op.domain == "vdeploy.internal" for op in ops), target.name
        outside = {str(op) for op in ops if op not in target.op_set}
        assert outside == set(coverage.unsupported) | set(coverage.fallback) | set(coverage.unknown), target.name
        assert set(coverage.unknown) <= {str(op) for op in target.unknown}, target.name
        if not target.spec.fallback:
            assert outside == set(coverage.unsupported) | set(coverage.unknown)
        tolerance = max([REL_TOL] + [10 * err for err in coverage.approximations.values()])
        got = run(legal, x)
        assert np.abs(got - expected).max() <= tolerance * scale, (target.name, coverage.rules)
