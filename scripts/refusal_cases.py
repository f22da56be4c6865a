"""Run every case of docs/refusals.md for real and print what vdeploy answered (exit code and stderr's last line).

python scripts/refusal_cases.py [WORKDIR]   (~2 min on 2 cores; the full-disk case needs root to mount a tmpfs)
hostile inputs made in WORKDIR -> `python -m vdeploy ...` per case -> markdown rows on stdout
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper

VDEPLOY = [sys.executable, "-m", "vdeploy"]
SHIPPED = Path(__file__).resolve().parents[1] / "targets.yaml"


def vdeploy(*args, env=None) -> tuple[int, str]:
    proc = subprocess.run(
        [*VDEPLOY, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("vdeploy: ")]
    return proc.returncode, (lines[-1] if lines else proc.stdout.strip().splitlines()[-1])


def setup(*args) -> None:
    subprocess.run([*VDEPLOY, *map(str, args)], check=True, capture_output=True)


def relu_onnx(path: Path, shape, ir_version: int | None = 10) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    kw = {"ir_version": ir_version} if ir_version else {}
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kw), str(path))
    return path


def external_onnx(path: Path, location: str) -> Path:
    weights = numpy_helper.from_array(np.ones(4, np.float32), "w")
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weights],
    )
    path.write_bytes(
        helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    return path


class Raises(torch.nn.Module):
    def forward(self, x):
        if x.sum() > -1e30:
            raise ValueError("calibration table not loaded: call load_table() first")
        return x


def catalogue_cases(work: Path):
    text = SHIPPED.read_text()
    data = yaml.safe_load(text)

    def write(name, content):
        path = work / f"{name}.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    chain = json.loads(json.dumps(data))
    for i in range(1500):
        chain["op_profiles"][f"p{i}"] = {"source": "x", "base": f"p{i + 1}" if i < 1499 else "tvm-relax"}
    chain["targets"]["x86-cpu-tvm"]["op_profile"] = "p0"
    named_all = json.loads(json.dumps(data))
    named_all["targets"]["all"] = named_all["targets"].pop("hailo-8") | {"aliases": []}
    empty_op = json.loads(json.dumps(data))
    empty_op["op_profiles"]["tvm-relax"]["ops"].append("")
    bomb = "".join(
        f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else ', '.join(['x'] * 10)}]\n" for i in range(7)
    )
    yield "a target defined twice", write("dup-target", text + "\n  x86-cpu:\n    description: again\n")
    yield "`backend:` given twice", write("dup-key", text.replace("  x86-cpu:\n", "  x86-cpu:\n    backend: tvm\n", 1))
    tvm_target = "      target: {kind: llvm, mcpu: host, num-cores: host}\n"
    yield "an alias bomb as `tvm.target`", write("bomb", text.replace(tvm_target, bomb + "      target: *l6\n", 1))
    yield "a file that is not UTF-8", write("latin1", ("# caf\xe9\n" + text.replace("—", "-")).encode("latin-1"))
    yield "nesting 500 deep", write("deep", text + "\nextra: " + "[" * 500 + "]" * 500 + "\n")
    yield "a 1,500-long `base:` chain", write("chain", yaml.safe_dump(chain, sort_keys=False))
    yield "`latency_ms: true`", write("bool", text.replace("latency_ms: ", "latency_ms: true #", 1))
    yield "a target named `all`", write("all", yaml.safe_dump(named_all, sort_keys=False))
    yield 'an op named `""`', write("empty-op", yaml.safe_dump(empty_op, sort_keys=False))


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    rows = []

    def case(title, *args, env=None, show=None):
        code, line = vdeploy(*args, env=env)
        rows.append((title, show or " ".join(map(str, args)), code, line))
        print(f"{code}  {title}: {line}", file=sys.stderr)

    for title, path in catalogue_cases(work):
        case(title, "targets", "--targets-file", path, show=f"vdeploy targets --targets-file {path.name}")

    model = work / "cnn.pt2"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    net(torch.randn(1, 3, 16, 16))
    torch.export.save(torch.export.export(net.eval(), (torch.randn(1, 3, 16, 16),)), str(model))
    build = ("build", model, "--target", "onnxruntime-cpu", "--iters", 3)
    key, public = work / "release", work / "release.pub"
    for path in (key, public):
        path.unlink(missing_ok=True)
    setup("keygen", key)
    shutil.rmtree(work / "out", ignore_errors=True)
    setup(*build, "--out", work / "out", "--sign", key)
    setup("build", model, "-t", "x86-cpu", "--iters", 3, "--out", work / "out")
    signed, ov = work / "out" / "cnn-onnxruntime-cpu", work / "out" / "cnn-x86-cpu"

    def tampered(name, source, change=None, keep_signature=False):
        path = work / "bundles" / name
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(source, path)
        if not keep_signature:
            (path / "signature.json").unlink(missing_ok=True)
        if change:
            manifest = json.loads((path / "manifest.json").read_text())
            change(manifest, path)
            (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return path

    sha = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    validate = ("validate", "--iters", 2)
    case(
        "files[] names ../../etc/passwd (right sha256)",
        *validate,
        tampered(
            "escape", signed, lambda m, p: m["files"].append({"path": "../../../../../../etc/passwd", "sha256": sha})
        ),
    )
    case(
        "files[] names /etc/passwd",
        *validate,
        tampered("absolute", signed, lambda m, p: m["files"].append({"path": "/etc/passwd", "sha256": sha})),
    )
    case(
        "artifact.entry outside the bundle",
        *validate,
        tampered("entry", signed, lambda m, p: m["artifact"].update(entry="../../elsewhere/model.onnx")),
    )
    case(
        "an artifact file dropped from files[]",
        *validate,
        tampered("unlisted", signed, lambda m, p: m.update(files=[f for f in m["files"] if f["path"] != "model.onnx"])),
    )

    def symlink(manifest, path):
        shutil.move(path / "model.onnx", work / "outside.onnx")
        (path / "model.onnx").symlink_to(work / "outside.onnx")

    case("a bundle file that is a symlink out", *validate, tampered("symlink", signed, symlink))
    case(
        "OpenVINO `CACHE_DIR` in artifact.options",
        *validate,
        tampered("cache", ov, lambda m, p: m["artifact"]["options"].update(CACHE_DIR=str(work / "cache"))),
    )
    case("a manifest without `files`", *validate, tampered("nofiles", signed, lambda m, p: m.pop("files")))
    case("a manifest without `artifact`", *validate, tampered("noartifact", signed, lambda m, p: m.pop("artifact")))

    loosen = tampered("loosen", signed, lambda m, p: m["budgets"]["numerics"].update(min_cosine=0.01), True)
    case("signed; tolerance edited", *validate, loosen, "--verify", public)
    report = tampered("report", signed, keep_signature=True)
    (report / "report.html").write_text((report / "report.html").read_text().replace("PASS", "PASS!"))
    case("signed; report.html edited", *validate, report, "--verify", public)
    extra = tampered("extra", signed, keep_signature=True)
    (extra / "notes.txt").write_text("added later")
    case("signed; a file added", *validate, extra, "--verify", public)
    other = work / "other"
    for path in (other, Path(f"{other}.pub")):
        path.unlink(missing_ok=True)
    setup("keygen", other)
    case("signed; verified with another key", *validate, signed, "--verify", f"{other}.pub")
    case("unsigned; `--verify`", *validate, ov, "--verify", public)
    case("unsigned; no `--verify` (exit 0, line shown)", *validate, ov)
    case("`--sign` given the public key", *build, "--out", work / "o-sign", "--sign", public)

    case("`--out` is a dangling symlink", *build, "--out", _dangling(work / "dangling-out", work / "gone"))
    (work / "o-link").mkdir(exist_ok=True)
    _dangling(work / "o-link" / "cnn-onnxruntime-cpu", work / "gone")
    case("the bundle path is a dangling symlink", *build, "--out", work / "o-link")
    case(
        "a declared 10^12-element input",
        "build",
        relu_onnx(work / "huge.onnx", [10**6, 10**6]),
        "-t",
        "onnxruntime-cpu",
        "--out",
        work / "o",
    )
    case("`--input-shape 1,3,100000,100000`", *build, "--out", work / "o", "--input-shape", "1,3,100000,100000")
    case(
        "a 100-dimensional shape",
        "build",
        relu_onnx(work / "dims.onnx", [1] * 100),
        "-t",
        "onnxruntime-cpu",
        "--out",
        work / "o",
    )
    (work / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    (work / "models").mkdir(exist_ok=True)
    case(
        "ONNX external data at an absolute path",
        "build",
        external_onnx(work / "models" / "abs.onnx", str(work / "secret.bin")),
        "-t",
        "onnxruntime-cpu",
        "--out",
        work / "o",
    )
    case(
        "ONNX external data `../secret.bin`",
        "build",
        external_onnx(work / "models" / "esc.onnx", "../secret.bin"),
        "-t",
        "onnxruntime-cpu",
        "--out",
        work / "o",
    )
    case(
        "ONNX saved at an IR version ORT cannot read",
        "build",
        relu_onnx(work / "new.onnx", [1, 4], None),
        "-t",
        "onnxruntime-cpu",
        "--out",
        work / "o",
    )
    torch.jit.save(torch.jit.script(Raises()), str(work / "raises.pt"))
    case(
        "a TorchScript whose forward raises",
        "build",
        work / "raises.pt",
        "-t",
        "onnxruntime-cpu",
        "--out",
        work / "o",
        "--input-shape",
        "1,4",
    )
    case(
        "a `.pt2` deflate bomb (300 MiB of zeros in 0.3 MiB)",
        "build",
        _bomb(model, work / "bomb.pt2"),
        "-t",
        "onnxruntime-cpu",
        "--out",
        work / "o",
    )
    disk = work / "small-disk"
    disk.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", disk], capture_output=True).returncode == 0:
        try:
            case("a full disk (a 48 KB tmpfs as --out)", *build, "--out", disk / "out")
        finally:
            subprocess.run(["umount", disk], check=False)
    code = (
        "import os, signal, sys, openvino as ov\n"
        "from openvino.frontend.onnx import ConversionExtension\n"
        "convert = ov.convert_model\n"
        "def ctrl_c(node): os.kill(os.getpid(), signal.SIGINT)\n"
        "ov.convert_model = lambda p, **k: convert(p, extension=[ConversionExtension('Relu', ctrl_c)])\n"
        "from vdeploy.cli import main\n"
        f"sys.argv = ['vdeploy', 'build', '{model}', '-t', 'x86-cpu', '--out', '{work / 'o-int'}']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    last = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("vdeploy: ")][-1]
    rows.append(("Ctrl-C (SIGINT) inside OpenVINO's conversion", "vdeploy build ... -t x86-cpu", proc.returncode, last))
    print("| case | exit | message |\n|---|---|---|")
    for title, _, code, line in rows:
        print(f"| {title} | {code} | `{line.replace('|', '/')}` |")


def _dangling(link: Path, target: Path) -> Path:
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    return link


def _bomb(source: Path, path: Path) -> Path:
    real = zipfile.ZipFile(source)
    with zipfile.ZipFile(path, "w") as archive:
        for info in real.infolist():
            archive.writestr(info, real.read(info))
        member = zipfile.ZipInfo(f"{real.namelist()[0].split('/')[0]}/data/weights/extra")
        member.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(member, "w", force_zip64=True) as f:
            for _ in range(300):
                f.write(bytes(1 << 20))
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="vdeploy-refusals-")))
