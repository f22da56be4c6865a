"""Content-addressed build cache: an unchanged rebuild restores the earlier bundle instead of building it again.

request + target -> build_key = sha256(model bytes (or timm version), the resolved target spec and op set, every
build option, data-file hashes, toolchain versions, vdeploy's version and code, the host CPU) — cheap inputs only:
nothing is loaded or exported to compute it.
hit:  $VDEPLOY_CACHE/builds/<key>/bundle/ -> copied into a new bundle's temp dir, every file's sha256 checked
      against the manifest -> manifest.measured.cache names the build it came from -> swapped into place as usual
miss: built as usual; the finished bundle is copied in (the last writer of a key wins), the least recently used
      entries evicted beyond VDEPLOY_BUILD_CACHE_MB (default 2048). VDEPLOY_BUILD_CACHE=off: not read, not written.
Not cached (no content address): an in-memory nn.Module, --arch package.module:factory, pickled modules.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import shutil
import time
from dataclasses import fields
from pathlib import Path

from vdeploy import atomic
from vdeploy.load import sha256_file

KEY_FORMAT = 1
ENTRY, BUNDLE = "entry.json", "bundle"
OFF_ENV, CAP_ENV, DEFAULT_CAP_MB = "VDEPLOY_BUILD_CACHE", "VDEPLOY_BUILD_CACHE_MB", 2048
STAGING = re.compile(r"\.(?:staging|evicted)-(?P<pid>\d+)-[0-9a-f]{8}")
NOT_OPTIONS = (  # request fields keyed by content (or per target) instead of by value, or not build inputs at all
    *("model", "targets", "out_dir", "catalog", "source", "example_inputs"),
    *("calib", "eval_data", "tuning_db", "rule_specs"),
    "sign_key",  # the cache stores bundles unsigned; a restore signs with the key asked for
)
HOST_ENV = ("ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "VDEPLOY_TVM_AARCH")  # settings that change what a build makes


def enabled() -> bool:
    return os.environ.get(OFF_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def cache_root() -> Path:
    from vdeploy.backends.toolchains import cache_dir  # $VDEPLOY_CACHE, default ~/.cache/vdeploy

    return cache_dir() / "builds"


# ---- the key ---------------------------------------------------------------------------------------------------


def build_key(request, target) -> str | None:
    """The hex key of one target's build of `request`, or None when the model has no content address."""
    record = key_record(request, target)
    return None if record is None else hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def key_record(request, target) -> dict | None:
    from vdeploy import __version__
    from vdeploy.backends import backend_class
    from vdeploy.manifest import toolchain

    model = model_identity(request)
    if model is None:
        return None
    spec = target.spec.model_dump(mode="json")
    return {
        "format": KEY_FORMAT,
        "model": model,
        "target": [
            target.name,
            target.backend,
            spec,
            sorted(map(str, target.op_set)),
            sorted(map(str, target.unknown)),
        ],
        "options": {f.name: plain(getattr(request, f.name)) for f in fields(request) if f.name not in NOT_OPTIONS},
        "rule_specs": None if request.rule_specs is None else [getattr(s, "name", str(s)) for s in request.rule_specs],
        "data": {
            "calib": path_hash(request.calib),
            "eval_data": path_hash(request.eval_data),
            "tuning_db": [path_hash(p) for p in request.tuning_db],
        },
        "toolchain": {**toolchain(), **backend_class(target.backend)().toolchain()},
        "vdeploy": {"version": __version__, "code": code_digest()},
        "host": host_identity(),
    }


def model_identity(request) -> dict | None:
    """What names the model's content without loading it (None: code outside the file decides what it is)."""
    if request.source is not None:
        return _in_memory_identity(request)
    if request.arch is not None:
        if not request.arch.startswith("timm:"):
            return None  # package.module:factory is the user's code: not content-addressed
        return {"arch": request.arch, "timm": _version("timm"), "weights": path_hash(Path(request.model))}
    if request.model.startswith("timm:"):
        return {"timm": request.model, "version": _version("timm")}
    path = Path(request.model)
    if not path.is_file():
        return None  # the build reports it
    with path.open("rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        return None  # a pickled module names classes by import path: their code is not in the file
    files = {"": sha256_file(path)}
    if head != b"PK\x03\x04":  # ONNX: weights may live in external data files beside it
        files.update({name: path_hash(path.parent / name) for name in _onnx_external_files(path)})
    return {"path": request.model, "files": files}


def _in_memory_identity(request) -> dict | None:
    import onnx

    source = request.source
    if isinstance(source, onnx.ModelProto):
        return {"name": request.model, "onnx": hashlib.sha256(source.SerializeToString()).hexdigest()}
    import torch

    if not isinstance(source, torch.export.ExportedProgram):
        return None  # an nn.Module is exported before it can be hashed: that is most of the build
    from vdeploy.sources import program_digest

    shapes = [[list(t.shape), str(t.dtype)] for t in request.example_inputs or ()]
    return {"name": request.model, "program": program_digest(source), "example_inputs": shapes}


def _onnx_external_files(path: Path) -> list[str]:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not loadable: the build reports it; the file's own hash keys it meanwhile
        return []
    return sorted(
        {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location" and e.value}
    )


def path_hash(path: Path | None) -> str | None:
    """sha256 of a file, or of a folder's file names and contents (a calibration image folder)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_file(item).encode())
        return digest.hexdigest()
    return f"missing:{path}"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of vdeploy's own sources (a development checkout changes without a version bump)."""
    import vdeploy
    import vdeploy.backends
    import vdeploy.graph_passes

    digest = hashlib.sha256()
    for package in (vdeploy, vdeploy.backends, vdeploy.graph_passes):
        root = Path(package.__file__).parent
        for item in sorted(root.rglob("*")):
            if item.is_file() and item.suffix in (".py", ".yaml", ".cc") and "__pycache__" not in item.parts:
                digest.update(f"{package.__name__}/{item.relative_to(root).as_posix()}".encode() + b"\0")
                digest.update(item.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def host_identity() -> dict:
    """The CPU a build ran on (its figures were measured there; some artifacts are tuned for it)."""
    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags", "Features", "CPU part") and key.strip() not in cpu:
                cpu[key.strip()] = value.strip()
    except OSError:
        pass
    env = {name: os.environ[name] for name in HOST_ENV if name in os.environ}
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu": cpu, "env": env}


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def plain(value):
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


# ---- store, restore, evict ---------------------------------------------------------------------------------------


def store(key: str, bundle_dir: Path, manifest: dict, final: Path) -> None:
    """Copy a finished bundle's files (from its temp dir) and manifest in as the entry for `key`."""
    from vdeploy import strict_json
    from vdeploy.bundle import MANIFEST

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    atomic.sweep(root, STAGING)
    staging = atomic.owned_dir(root, ".staging-")
    try:
        for entry in manifest["files"]:
            _copy(bundle_dir / entry["path"], staging / BUNDLE / entry["path"])
        (staging / BUNDLE / MANIFEST).write_text(strict_json.dumps(manifest, indent=2) + "\n")
        info = {
            "key": key,
            "name": final.name,
            "bundle": str(final.resolve()),
            "built_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "bytes": sum(e["bytes"] for e in manifest["files"]),
        }
        (staging / ENTRY).write_text(json.dumps(info, indent=1))
        old = atomic.swap_into_place(staging, root / key, lambda path: None)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        atomic.remove_owned(staging)
    evict(root, int(float(os.environ.get(CAP_ENV, DEFAULT_CAP_MB)) * 1e6), keep=key)


def restore_into(key: str, work_dir: Path) -> tuple[dict, dict] | None:
    """Copy the entry's bundle files into `work_dir` (a bundle's temp dir); (manifest, entry info), or None when
    there is no whole entry (a mismatching file drops the entry)."""
    from vdeploy.bundle import MANIFEST

    entry = cache_root() / key
    try:
        info = json.loads((entry / ENTRY).read_text())
        manifest = json.loads((entry / BUNDLE / MANIFEST).read_text())
        for item in manifest["files"]:
            target = work_dir / item["path"]
            _copy(entry / BUNDLE / item["path"], target)
            if sha256_file(target) != item["sha256"]:
                _drop(entry)
                return None
        os.utime(entry / ENTRY)  # last used: eviction order
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest, info


def evict(root: Path, cap_bytes: int, keep: str = "") -> list[str]:
    """Remove least recently used entries until the cache holds at most `cap_bytes` (never `keep`)."""
    entries = []
    for path in root.iterdir() if root.is_dir() else ():
        try:
            info = json.loads((path / ENTRY).read_text())
            entries.append(((path / ENTRY).stat().st_mtime, path, int(info.get("bytes", 0))))
        except (OSError, ValueError, TypeError):
            continue
    total, removed = sum(size for _, _, size in entries), []
    for _, path, size in sorted(entries, key=lambda e: e[0]):
        if total <= cap_bytes:
            break
        if path.name != keep:
            _drop(path)
            total -= size
            removed.append(path.name)
    return removed


def _drop(entry: Path) -> None:
    """Take an entry out of sight in one rename (readers see it whole or not at all), then delete it."""
    grave = entry.with_name(f".evicted-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        entry.rename(grave)
    except OSError:
        return
    shutil.rmtree(grave, ignore_errors=True)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


# ---- the cache as one build sees it ------------------------------------------------------------------------------


class BuildCache:
    """A key per target of one build (None: not cached), and whether hits are reused (--no-cache: rebuilt and
    stored again)."""

    def __init__(self, request, targets, *, reuse: bool = True, progress=lambda _: None):
        on = enabled()
        self.request, self.reuse, self.progress = request, reuse and on, progress
        self.keys = {t.name: _key_or_none(request, t) if on else None for t in targets}

    def note(self, target) -> dict | None:
        """measured.cache of a fresh build (None: not cached)."""
        key = self.keys.get(target.name)
        return None if key is None else {"hit": False, "key": key}

    def restore(self, target, stem: str):
        """A BuildResult from the cache for `target`, written to OUT/<stem>-<target> like a build; None on a miss."""
        key = self.keys.get(target.name)
        if key is None or not self.reuse:
            return None
        from vdeploy.bundle import BundleWriter
        from vdeploy.pipeline import BuildResult
        from vdeploy.report_html import render_html
        from vdeploy.signing import sign_if_asked

        started = time.perf_counter()
        with BundleWriter(self.request.out_dir, f"{stem}-{target.name}") as writer:
            found = restore_into(key, writer.tmp)
            if found is None:
                return None
            manifest, info = found
            built = {"hit": True, "key": key, "built_at": info["built_at"], "bundle": info["bundle"]}
            manifest["measured"]["cache"] = built
            (writer.tmp / "report.html").write_text(render_html(manifest))
            sign_if_asked(self.request, writer.tmp, manifest)
            bundle = writer.finish(manifest)
        self.progress(f"{target.name}: restored from the build cache (built {info['built_at']}; --no-cache rebuilds)")
        return BuildResult(target.name, manifest, bundle, {"cache": round(time.perf_counter() - started, 3)})

    def store(self, target, work_dir: Path, manifest: dict, final: Path) -> None:
        key = self.keys.get(target.name)
        if key is None:
            return
        try:
            store(key, work_dir, manifest, final)
        except OSError as exc:  # a full or read-only cache never fails the build
            self.progress(f"build cache: not stored ({exc.strerror or exc})")


def _key_or_none(request, target) -> str | None:
    try:
        return build_key(request, target)
    except OSError:  # an unreadable input: the build itself says what is wrong with it
        return None
