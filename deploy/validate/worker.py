"""Child-process side of isolate.run_artifact: open the artifact, run the samples, time it, write results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(job: Path) -> int:
    from vdeploy.backends import get_backend
    from vdeploy.backends.base import Artifact
    from vdeploy.errors import VdeployError
    from vdeploy.validate.measure import measure
    from vdeploy.validate.power import find_meter

    spec = json.loads((job / "job.json").read_text())
    artifact = Artifact.from_dict(spec["artifact"])
    try:
        with np.load(job / "inputs.npz") as data:
            inputs = {name: data[name] for name in data.files}
        backend = get_backend(artifact.backend)
        with backend.open(artifact, Path(spec["bundle_dir"])) as session:
            count = next(iter(inputs.values())).shape[0]
            samples = [{n: a[i] for n, a in inputs.items()} for i in range(count)]
            per_sample = backend.run_many(session, samples)
            latency = energy = None
            power_reason = "not timed on this host"
            if spec["iters"] > 0:  # finding a meter starts tegrastats / NVML: only for timed runs
                meter, power_reason = find_meter(backend.power_meters)
                first = {n: a[0] for n, a in inputs.items()}
                latency, energy = measure(session, first, warmup=spec["warmup"], iters=spec["iters"], power_meter=meter)
    except VdeployError as exc:
        (job / "error.json").write_text(json.dumps(exc.as_dict()))
        return 1
    except Exception as exc:  # a runtime's own exception: report it as the backend's failure
        message = f"{artifact.backend} failed to run the artifact: {type(exc).__name__}: {str(exc).strip()[:300]}"
        (job / "error.json").write_text(json.dumps({"message": message, "hint": "rerun with VDEPLOY_DEBUG=1"}))
        return 1
    stacked = {f"out{i}": np.stack([np.asarray(s[i]) for s in per_sample]) for i in range(len(per_sample[0]))}
    np.savez(job / "outputs.npz", **stacked)
    import resource

    (job / "result.json").write_text(
        json.dumps(
            {
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # Linux reports KiB
                "latency_ms": list(latency.samples_ms) if latency else None,
                "energy": energy.to_manifest() if energy else None,
                "power_reason": power_reason,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
