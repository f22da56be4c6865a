"""The same model built twice in one process writes the same artifact bytes (a release matrix worker builds many
cells in one process; OpenVINO's op-name counter is process-wide)."""

from __future__ import annotations

import pytest
import torch

from tests.models import GOLDEN


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_x86_artifact_bytes_do_not_depend_on_earlier_builds(tmp_path, precision):
    import vdeploy

    build_fn, shape = GOLDEN["vit"]
    model = tmp_path / "vit.pt2"
    torch.export.save(torch.export.export(build_fn(seed=0), (torch.randn(shape),)), str(model))
    hashes = []
    for run in ("first", "second"):
        (built,) = vdeploy.build(
            str(model), ["x86-cpu"], out=tmp_path / run, precision=precision, iters=3, warmup=1, runtime="openvino"
        )  # pinned: the default FP32 build may pick ONNX Runtime (deploy/runtimes.py); this test is about OpenVINO
        hashes.append({f["path"]: f["sha256"] for f in built.manifest["files"]})
    assert "model.xml" in hashes[0] and hashes[0] == hashes[1]
