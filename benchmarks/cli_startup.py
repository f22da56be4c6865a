"""How long `vdeploy --help` and `vdeploy targets` take (heavy imports must stay lazy). Run: make bench"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

VDEPLOY = str(Path(sys.executable).with_name("vdeploy"))


def timed(args, runs=5):
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([VDEPLOY, *args], capture_output=True, check=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


if __name__ == "__main__":
    for args in (["--help"], ["targets"]):
        print(f"vdeploy {' '.join(args):10s} median {timed(args) * 1000:7.1f} ms over 5 runs")
