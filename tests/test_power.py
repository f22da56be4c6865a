"""Power meters on their real formats: tegrastats lines, a RAPL sysfs tree, NVML through pynvml.

Tegrastats format: NVIDIA documents each rail as "<rail> X/Y", X = current and Y = average power in milliwatts
(L4T 32.x "tegrastats Utility" appendix, https://docs.nvidia.com/jetson/archives/l4t-archived/l4t-325/
Tegra%20Linux%20Driver%20Package%20Development%20Guide/AppendixTegraStats.html); Jetson Linux 35/36 prints the
unit, "<rail> XmW/YmW", and names the Orin module rails VDD_IN, VDD_CPU_GPU_CV and VDD_SOC (Jetson Linux
Developer Guide r36.3, "Jetson Orin Nano Series, Jetson Orin NX Series and Jetson AGX Orin Series",
https://docs.nvidia.com/jetson/archives/r36.3/DeveloperGuide/SD/PlatformPowerAndPerformance/
JetsonOrinNanoSeriesJetsonOrinNxSeriesAndJetsonAgxOrinSeries.html). The sample lines below are whole lines printed
by real devices (sources next to each), because the copies of NVIDIA's pages reachable here cut off before the
rail rows' examples.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
import types
from pathlib import Path

import pytest

from vdeploy.backends import get_backend
from vdeploy.validate.power import (
    Availability,
    Energy,
    MeterError,
    NvmlMeter,
    PowerMeter,
    PowerSource,
    RaplMeter,
    TegrastatsMeter,
    parse_tegrastats,
    pick_meter,
)

# Jetson Orin Nano, L4T 36.4 (kernel 5.15.148-tegra), idle; from a public system dump.
ORIN_NANO = (
    "01-04-2025 16:02:59 RAM 1273/7620MB (lfb 1x4MB) SWAP 286/3810MB (cached 1MB) "
    "CPU [0%@1036,0%@1036,1%@1036,0%@1036,0%@729,0%@729] GR3D_FREQ 0% cpu@45.875C soc2@45.843C "
    "soc0@44.843C gpu@45.437C tj@46.312C soc1@46.312C VDD_IN 4968mW/4968mW VDD_CPU_GPU_CV 436mW/436mW "
    "VDD_SOC 1708mW/1708mW"
)
# Jetson Nano (L4T 32), POM_* rails without units; rbonghi/jetson_stats tests/tegrastats.
NANO = (
    "RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [30%@1036,33%@1036,28%@1036,26%@1036] EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 NVENC 716 NVDEC 716 APE 25 "
    "PLL@57C CPU@60.5C PMIC@100C GPU@59C AO@65C thermal@59.75C POM_5V_IN 4520/4680 POM_5V_GPU 0/0 "
    "POM_5V_CPU 1078/1205"
)
# Jetson TX2 (L4T 32.2); FindHao/tx-utils issue #3.
TX2 = (
    "RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345] EMC_FREQ 0% GR3D_FREQ 0% "
    "PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C BCPU@42.5C thermal@41.9C Tdiode@41.25C "
    "VDD_SYS_GPU 153/158 VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 VDD_IN 3140/3208 VDD_SYS_CPU 536/590 "
    "VDD_SYS_DDR 557/601"
)


def test_orin_line_gives_the_three_module_rails_in_milliwatts():
    assert parse_tegrastats(ORIN_NANO) == {
        "VDD_IN": (4968, 4968),
        "VDD_CPU_GPU_CV": (436, 436),
        "VDD_SOC": (1708, 1708),
    }


def test_older_lines_without_units_and_other_x_over_y_statistics():
    nano = parse_tegrastats(NANO)
    assert nano == {"POM_5V_IN": (4520, 4680), "POM_5V_GPU": (0, 0), "POM_5V_CPU": (1078, 1205)}  # no RAM/IRAM/NVENC
    tx2 = parse_tegrastats(TX2)
    assert tx2["VDD_IN"] == (3140, 3208) and tx2["VDD_SYS_DDR"] == (557, 601) and len(tx2) == 6
    assert parse_tegrastats("RAM 2020/7852MB (lfb 1164x4MB) SWAP 0/0MB") == {}


def _fake_tegrastats(tmp_path: Path, line: str) -> Path:
    """An executable that prints `line` every --interval ms, like the real tool."""
    exe = tmp_path / "tegrastats"
    exe.write_text(
        f"#!{sys.executable}\nimport sys, time\n"
        "ms = int(sys.argv[sys.argv.index('--interval') + 1])\n"
        f"while True:\n    print({line!r}, flush=True)\n    time.sleep(ms / 1000)\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_tegrastats_meter_integrates_the_board_rail(tmp_path):
    meter = TegrastatsMeter(interval_ms=20, command=str(_fake_tegrastats(tmp_path, ORIN_NANO)))
    assert meter.available(), meter.available().reason
    meter.start()
    time.sleep(0.3)
    energy = meter.stop()
    assert energy.source is PowerSource.tegrastats and energy.samples >= 3
    assert energy.watts == pytest.approx(4.968)
    assert energy.joules == pytest.approx(4.968 * energy.seconds)


def test_tegrastats_meter_falls_back_to_pom_rail_and_names_missing_rails(tmp_path):
    nano = TegrastatsMeter(interval_ms=20, command=str(_fake_tegrastats(tmp_path, NANO)))
    nano.start()
    assert nano.stop().watts == pytest.approx(4.520)
    wrong = TegrastatsMeter(rail="VDD_GPU_SOC", interval_ms=20, command=str(tmp_path / "tegrastats"))
    reason = wrong.available().reason
    assert "VDD_GPU_SOC" in reason and "POM_5V_IN" in reason
    assert "not found" in TegrastatsMeter(command="no-such-tegrastats").available().reason


def _rapl_tree(root: Path, domains: dict[str, tuple[str, int, int]]) -> Path:
    """Lay out root/<dir>/{name, energy_uj, max_energy_range_uj} as the powercap driver does."""
    for dirname, (name, energy, max_range) in domains.items():
        d = root / dirname
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def test_rapl_sums_packages_and_skips_subzones_and_psys(tmp_path):
    root = _rapl_tree(
        tmp_path / "powercap",
        {
            "intel-rapl:0": ("package-0", 1_000_000, 262_143_328_850),
            "intel-rapl:1": ("package-1", 5_000_000, 262_143_328_850),
            "intel-rapl:0:0": ("core", 10, 262_143_328_850),  # inside package-0: not added again
            "intel-rapl:2": ("psys", 10, 262_143_328_850),  # platform domain containing the packages
        },
    )
    meter = RaplMeter(root)
    assert meter.available()
    meter.start()
    (root / "intel-rapl:0/energy_uj").write_text("3500000\n")  # +2.5 J
    (root / "intel-rapl:1/energy_uj").write_text("5500000\n")  # +0.5 J
    (root / "intel-rapl:0:0/energy_uj").write_text("999999999\n")
    energy = meter.stop()
    assert energy.joules == pytest.approx(3.0) and energy.source is PowerSource.rapl


def test_rapl_counter_wrapping_between_start_and_stop(tmp_path):
    max_range = 262_143_328_850
    root = _rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", max_range - 400_000, max_range)})
    meter = RaplMeter(root)
    meter.start()
    (root / "intel-rapl:0/energy_uj").write_text("600000\n")  # wrapped: 0.4 J to the top, then 0.6 J
    assert meter.stop().joules == pytest.approx(1.0)


def test_rapl_permission_denied_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    root = _rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, 2**32)})
    counter = root / "intel-rapl:0/energy_uj"
    counter.chmod(0)  # what Linux >= 5.10 does to energy_uj for non-root users
    if os.geteuid() == 0:  # root reads a mode-000 file anyway: raise the same EACCES the kernel would
        read_text = Path.read_text

        def denied(self, *args, **kwargs):
            if self == counter:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return read_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", denied)
    ok = RaplMeter(root).available()
    assert not ok and str(counter) in ok.reason and "root" in ok.reason
    with pytest.raises(MeterError, match="not readable"):
        RaplMeter(root).start()


def test_rapl_absent_tree(tmp_path):
    ok = RaplMeter(tmp_path / "nope").available()
    assert not ok and "RAPL" in ok.reason
    empty = RaplMeter(tmp_path).available()  # the tree exists, but has no package domain
    assert not empty and "package" in empty.reason


def test_nvml_meter_on_the_real_api():
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py not installed (pip install 'vdeploy[nvidia]')")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        ok = NvmlMeter().available()
        assert not ok and "NVML" in ok.reason  # the meter says why, rather than raising
        pytest.skip(f"NVML cannot start on this host: {exc}")
    meter = NvmlMeter()
    assert meter.available(), meter.available().reason
    meter.start()
    time.sleep(0.2)
    energy = meter.stop()
    assert energy.source is PowerSource.nvml and energy.seconds > 0.1 and energy.joules > 0
    assert 1 < energy.watts < 2000  # idle-to-busy board power of any NVIDIA GPU


def _stand_in_pynvml(energy_mj: dict | None = None, power_mw=150_000):
    """Not the real library: pynvml's call surface with fixed readings, to check the meter's arithmetic on hosts
    without a driver (the real API is exercised by the test above wherever NVML starts)."""

    class NVMLError(Exception):
        pass

    def energy(handle):
        if energy_mj is None:
            raise NVMLError("Not Supported")
        return energy_mj["counter"]

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetPowerUsage=lambda handle: power_mw,
    )


def test_nvml_energy_counter_and_sampled_power_arithmetic(monkeypatch):
    counter = {"counter": 1_000_000}  # mJ since the driver loaded
    monkeypatch.setitem(sys.modules, "pynvml", _stand_in_pynvml(energy_mj=counter))
    meter = NvmlMeter()
    meter.start()
    counter["counter"] += 2_500
    energy = meter.stop()
    assert energy.joules == pytest.approx(2.5) and energy.source is PowerSource.nvml
    monkeypatch.setitem(sys.modules, "pynvml", _stand_in_pynvml(energy_mj=None, power_mw=150_000))
    meter = NvmlMeter(interval_s=0.01)
    meter.start()
    time.sleep(0.1)
    energy = meter.stop()
    assert energy.samples >= 3 and energy.watts == pytest.approx(150.0)


def test_meters_follow_the_protocol_and_pick_meter(tmp_path):
    for meter in (NvmlMeter(), RaplMeter(tmp_path), TegrastatsMeter()):
        assert isinstance(meter, PowerMeter)
        assert isinstance(meter.available(), Availability)
    root = _rapl_tree(tmp_path / "pc", {"intel-rapl:0": ("package-0", 0, 2**32)})
    rapl = RaplMeter(root)
    assert pick_meter(("rapl", "tegrastats"), meters=[TegrastatsMeter(command="absent"), rapl]) is rapl
    assert pick_meter(get_backend("npu").power_meters) is None  # handoff targets: estimate only
    with pytest.raises(MeterError, match="before it was started"):
        RaplMeter(root).stop()


def test_energy_reports_mean_power_with_its_source():
    energy = Energy(joules=3.0, seconds=1.5, source=PowerSource.rapl, samples=2)
    assert energy.watts == 2.0
    assert energy.to_manifest()["mean"] == 2.0 and energy.to_manifest()["source"] == "rapl"
