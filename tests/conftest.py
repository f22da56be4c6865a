"""Shared fixtures: golden models saved in every format vdeploy loads, and a CLI runner that returns the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from typer.testing import CliRunner

from tests.models import GOLDEN
from vdeploy.cli import app


@pytest.fixture(scope="session", autouse=True)
def build_cache_off():
    """Tests build the same models again and again and each must really build: the build cache is off for the
    session (tests/test_build_cache.py turns it on in a folder of its own)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("VDEPLOY_BUILD_CACHE", "off")
    yield
    patch.undo()


@pytest.fixture(scope="session")
def onnx_node_cases():
    """ONNX's backend node test cases, regenerated from onnx.backend.test.case.node (the wheel ships no data);
    collected once per session (~10-20 s)."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        return collect_testcases()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def saved_pt2(model_dir):
    """name -> path of the golden model saved with torch.export.save (built once per session)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            build_fn, shape = GOLDEN[name]
            program = torch.export.export(build_fn(seed=0), (torch.randn(shape),))
            cache[name] = model_dir / f"{name}.pt2"
            torch.export.save(program, str(cache[name]))
        return cache[name]

    return get


class CliResult(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)


@pytest.fixture
def cli():
    """Run `vdeploy ARGS...` in-process; stdout and stderr kept apart."""

    def run(*args: str, env: dict | None = None) -> CliResult:
        result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture(scope="session")
def int8_isa_env() -> dict:
    """The environment OpenVINO INT8 runs under on this CPU (an ISA cap below AMX where the probe needed one)."""
    from vdeploy.cpu_features import probe_int8

    support = probe_int8()
    return support.env() if support.ok else {}
