"""Power meters behind one interface; every figure names its source (the analytic estimate is in estimate.py).

meter.available() -> Availability(ok, reason); meter.start() -> [workload] -> meter.stop() -> Energy(J, s, source, n)
NVML energy counter (mJ) or sampled power (mW) · RAPL package energy_uj (µJ) · tegrastats board rail (mW).
Meters keep only what start() hands to stop(); nothing here logs, and only start()/stop() raise (MeterError).
"""

from __future__ import annotations

import contextlib
import enum
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from vdeploy.errors import VdeployError


class PowerSource(str, enum.Enum):
    nvml = "nvml"
    rapl = "rapl"
    tegrastats = "tegrastats"
    estimate = "estimate"


class MeterError(VdeployError):
    kind = "power"


@dataclass(frozen=True)
class Energy:
    joules: float
    seconds: float
    source: PowerSource
    samples: int  # counter reads or power samples behind the figure

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    def to_manifest(self) -> dict:
        return {
            "mean": round(self.watts, 4),
            "source": self.source.value,
            "joules": round(self.joules, 6),
            "seconds": round(self.seconds, 6),
            "samples": self.samples,
        }


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""  # why not, in words a user can act on

    def __bool__(self) -> bool:
        return self.ok


@runtime_checkable
class PowerMeter(Protocol):
    source: PowerSource

    def available(self) -> Availability: ...
    def start(self) -> None: ...
    def stop(self) -> Energy: ...


class _Meter:
    """What the meters share: the one record start() hands to stop(), and the errors around it."""

    _run: dict | None = None
    source: PowerSource
    hint: str

    def available(self) -> Availability:  # each meter says how it reads its device
        raise NotImplementedError

    def _require(self) -> None:
        if not (ok := self.available()):
            raise MeterError(f"{self.source.value} meter unavailable: {ok.reason}", self.hint)

    def _take(self) -> dict:
        run, self._run = self._run, None
        if run is None:
            raise MeterError(f"{self.source.value} meter stopped before it was started", "call start() first")
        return run


class NvmlMeter(_Meter):
    """NVIDIA GPU via NVML: nvmlDeviceGetTotalEnergyConsumption (mJ since driver load; Volta and newer) when the
    device supports it, else a thread sampling nvmlDeviceGetPowerUsage (mW) every `interval_s`, integrated by the
    trapezoid rule. On Ampere and newer, GetPowerUsage is a 1 s average, so sampled energy lags short runs."""

    source, hint = PowerSource.nvml, "measure on a host with an NVIDIA driver"

    def __init__(self, device_index: int = 0, interval_s: float = 0.02):
        self.device_index, self.interval_s = device_index, interval_s

    def available(self) -> Availability:
        try:
            import pynvml

            pynvml.nvmlInit()
        except ImportError:
            return Availability(False, "nvidia-ml-py is not installed (pip install 'vdeploy[nvidia]')")
        except pynvml.NVMLError as exc:
            return Availability(False, f"NVML cannot start: {exc} (no NVIDIA driver on this host)")
        try:
            mode = _nvml_mode(pynvml, pynvml.nvmlDeviceGetHandleByIndex(self.device_index))
        except pynvml.NVMLError as exc:
            return Availability(False, f"NVML has no GPU {self.device_index}: {exc}")
        finally:
            pynvml.nvmlShutdown()
        return Availability(mode is not None, "" if mode else f"GPU {self.device_index} reports no energy or power")

    def start(self) -> None:
        self._require()
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        mode = _nvml_mode(pynvml, handle)
        query = pynvml.nvmlDeviceGetTotalEnergyConsumption if mode == "energy" else pynvml.nvmlDeviceGetPowerUsage
        run = {"nvml": pynvml, "mode": mode, "read": lambda: (time.perf_counter(), query(handle) / 1000.0)}
        run["samples"] = [run["read"]()]  # (s, J) from the energy counter (mJ), or (s, W) from power (mW)
        if mode == "power":
            run["halt"] = threading.Event()
            run["thread"] = threading.Thread(target=_poll_nvml, args=(run, self.interval_s), daemon=True)
            run["thread"].start()
        self._run = run

    def stop(self) -> Energy:
        run = self._take()
        try:
            if "thread" in run:
                run["halt"].set()
                run["thread"].join()
            samples = [*run["samples"], run["read"]()]
        finally:
            run["nvml"].nvmlShutdown()
        (t0, first), (t1, last) = samples[0], samples[-1]
        trapezoid = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(samples, samples[1:]))
        joules = last - first if run["mode"] == "energy" else trapezoid
        return Energy(joules, t1 - t0, self.source, len(samples))


def _nvml_mode(pynvml, handle) -> str | None:
    for mode, query in (
        ("energy", pynvml.nvmlDeviceGetTotalEnergyConsumption),
        ("power", pynvml.nvmlDeviceGetPowerUsage),
    ):
        with contextlib.suppress(pynvml.NVMLError):
            query(handle)
            return mode
    return None


def _poll_nvml(run: dict, interval_s: float) -> None:
    while not run["halt"].wait(interval_s):
        with contextlib.suppress(run["nvml"].NVMLError):  # a missed sample only coarsens the integral
            run["samples"].append(run["read"]())


def _text(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return ""


_PACKAGE_DIR = re.compile(r"intel-rapl:\d+")  # package level; intel-rapl:N:M are its core/uncore/dram subzones


class RaplMeter(_Meter):
    """Intel/AMD RAPL through the powercap sysfs tree: the sum of the package domains' energy_uj counters
    (root/intel-rapl:N with name 'package-N'; 'psys' is left out, it already contains the packages).
    A counter that wraps between start and stop is unwrapped with max_energy_range_uj; two wraps in one
    window (hours at package power) cannot be seen."""

    source, hint = PowerSource.rapl, "measure on an x86 host with RAPL"

    def __init__(self, root: Path = Path("/sys/class/powercap")):
        self.root = Path(root)

    def _domains(self) -> list[Path]:
        dirs = sorted(self.root.iterdir()) if self.root.is_dir() else []
        return [d for d in dirs if _PACKAGE_DIR.fullmatch(d.name) and _text(d / "name").startswith("package")]

    def _read(self) -> dict[Path, tuple[int, int]]:
        return {
            d: (int((d / "energy_uj").read_text()), int((d / "max_energy_range_uj").read_text()))
            for d in self._domains()
        }

    def available(self) -> Availability:
        if not self.root.is_dir():
            return Availability(
                False,
                f"no {self.root}: this kernel exposes no RAPL powercap interface "
                "(a VM, a non-x86 CPU, or the intel_rapl module is not loaded)",
            )
        if not self._domains():
            return Availability(False, f"no package domain (intel-rapl:N named package-N) under {self.root}")
        try:
            self._read()
        except PermissionError as exc:
            return Availability(
                False,
                f"{exc.filename} is not readable by this user (root-only since Linux 5.10, "
                "CVE-2020-8694): run as root or grant read access to energy_uj",
            )
        except (OSError, ValueError) as exc:
            return Availability(False, f"cannot read the RAPL counters under {self.root}: {exc}")
        return Availability(True)

    def start(self) -> None:
        self._require()
        self._run = {"t0": time.perf_counter(), "counters": self._read()}

    def stop(self) -> Energy:
        run = self._take()
        after, seconds = self._read(), time.perf_counter() - run["t0"]
        unwrapped = (
            e1 - e0 if e1 >= e0 else e1 + top - e0  # wrapped: up to the top, then from 0
            for (e0, top), (e1, _) in ((run["counters"][d], after[d]) for d in run["counters"])
        )
        return Energy(sum(unwrapped) / 1e6, seconds, self.source, 2)


# "VDD_IN 4968mW/4968mW" (Orin, JetPack 5/6) or "POM_5V_IN 4520/4680" (Nano, TX2, Xavier; L4T 32): current/average
# in milliwatts. "RAM 1273/7620MB" and "IRAM 0/252kB" have a unit after the number, so the lookahead rejects them.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
BOARD_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input: Orin/Xavier NX/TX2, then Nano/TX1


def parse_tegrastats(line: str) -> dict[str, tuple[int, int]]:
    """One tegrastats line -> {rail: (current_mW, average_mW)}; other statistics are ignored."""
    return {m[1]: (int(m[2]), int(m[3])) for m in _RAIL.finditer(line)}


class TegrastatsMeter(_Meter):
    """Jetson: runs `tegrastats --interval N` (line-buffered through stdbuf when present) and integrates one
    rail's current reading: energy = mean of the readings that arrived between start and stop x elapsed time.
    `rail=None` takes the board input, VDD_IN, else POM_5V_IN on older modules."""

    source, hint = PowerSource.tegrastats, "measure on a Jetson with JetPack"

    def __init__(self, rail: str | None = None, interval_ms: int = 100, command: str = "tegrastats"):
        self.rail, self.interval_ms, self.command = rail, interval_ms, command

    def _pick(self, rails: dict) -> str | None:
        return next((r for r in ((self.rail,) if self.rail else BOARD_INPUT_RAILS) if r in rails), None)

    def _argv(self) -> list[str] | None:
        exe, stdbuf = shutil.which(self.command), shutil.which("stdbuf")
        return [*([stdbuf, "-oL"] if stdbuf else []), exe, "--interval", str(self.interval_ms)] if exe else None

    def available(self) -> Availability:
        argv = self._argv()
        if argv is None:
            return Availability(False, f"{self.command!r} not found on PATH (not a Jetson, or no JetPack tools)")
        try:
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
                timer = threading.Timer(2.0 + self.interval_ms / 1000.0, proc.kill)
                timer.start()
                line = proc.stdout.readline()
                timer.cancel()
                proc.kill()
        except OSError as exc:
            return Availability(False, f"cannot run {self.command}: {exc.strerror}")
        rails = parse_tegrastats(line)
        want, found = self.rail or " or ".join(BOARD_INPUT_RAILS), self._pick(rails) is not None
        return Availability(found, "" if found else f"tegrastats has no {want} rail (seen: {', '.join(rails) or '-'})")

    def start(self) -> None:
        self._require()
        proc = subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        run: dict[str, Any] = {"proc": proc, "readings": [], "t0": time.perf_counter()}
        run["thread"] = threading.Thread(target=self._reader, args=(run,), daemon=True)
        run["thread"].start()
        self._run = run

    def _reader(self, run: dict) -> None:
        for line in run["proc"].stdout:
            rails = parse_tegrastats(line)
            if (rail := self._pick(rails)) is not None:
                run["readings"].append((time.perf_counter(), rails[rail][0] / 1000.0))

    def stop(self) -> Energy:
        run = self._take()
        t1 = time.perf_counter()
        deadline = t1 + 2.0 + 2 * self.interval_ms / 1000.0
        while not run["readings"] and time.perf_counter() < deadline:  # a run shorter than one interval
            time.sleep(0.005)
        run["proc"].kill()  # tegrastats keeps no state worth a clean exit
        run["proc"].wait()
        run["thread"].join(timeout=2.0)
        run["proc"].stdout.close()
        inside = [w for t, w in run["readings"] if t <= t1] or [w for _, w in run["readings"][:1]]
        if not inside:
            raise MeterError("tegrastats printed no power reading during the run", "check `tegrastats` by hand")
        seconds = t1 - run["t0"]
        return Energy(sum(inside) / len(inside) * seconds, seconds, self.source, len(inside))


# Meter kinds by the names backends list in BackendBase.power_meters (best first).
METERS: dict[str, type] = {"nvml": NvmlMeter, "rapl": RaplMeter, "tegrastats": TegrastatsMeter}


def pick_meter(kinds, meters: list | None = None) -> PowerMeter | None:
    """The first available real meter of the given kinds, or None: use the estimate."""
    return find_meter(kinds, meters)[0]


def find_meter(kinds, meters: list | None = None) -> tuple[PowerMeter | None, str]:
    """(first available meter, "") or (None, why each candidate is unavailable). `kinds`: names in METERS."""
    if meters is None:
        meters = [METERS[kind]() for kind in kinds]
    reasons = []
    for meter in meters:
        availability = meter.available()
        if availability:
            return meter, ""
        reasons.append(f"{meter.source.value}: {availability.reason}")
    return None, "; ".join(reasons) or "no power meter sees this backend's device"
