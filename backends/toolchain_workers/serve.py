"""Persistent worker (arm toolchain venv): load one artifact once, then run inputs sent over a pipe until EOF.

argv: KIND PATH   (KIND: executorch = a .pte through executorch.runtime; litert = a .tflite through LiteRT)
protocol, on the original stdout/stdin (library prints go to stderr):
  parent -> {"inputs": [{"shape", "dtype"}...]}\\n + the raw bytes of each input (C order)
  worker -> {"ok": true, "outputs": [{"shape", "dtype"}...]}\\n + raw bytes   |   {"ok": false, "message"}\\n
The first line the worker writes is {"ok": true, "ready": ...} once the artifact is loaded.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence

import numpy as np


def executorch_runner(path: str):
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")

    def run(arrays):
        return [
            np.asarray(t.detach().numpy() if hasattr(t, "detach") else t)
            for t in method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        ]

    return run


def litert_runner(path: str):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ethos_u import litert_runner as runner

    return runner(path)


def read_exact(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main() -> int:
    kind, path = sys.argv[1], sys.argv[2]
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    proto_in = sys.stdin.buffer

    def send(header: dict, payload: Sequence[np.ndarray] = ()) -> None:
        proto_out.write((json.dumps(header) + "\n").encode())
        for array in payload:
            proto_out.write(np.ascontiguousarray(array).tobytes())
        proto_out.flush()

    try:
        run = {"executorch": executorch_runner, "litert": litert_runner}[kind](path)
    except Exception as exc:
        traceback.print_exc()
        send({"ok": False, "message": f"cannot load {path}: {type(exc).__name__}: {str(exc)[:300]}"})
        return 1
    send({"ok": True, "ready": kind})
    while True:
        line = proto_in.readline()
        if not line:
            return 0
        header = json.loads(line)
        arrays = []
        for spec in header["inputs"]:
            dtype = np.dtype(spec["dtype"])
            count = int(np.prod(spec["shape"])) if spec["shape"] else 1
            arrays.append(np.frombuffer(read_exact(proto_in, count * dtype.itemsize), dtype).reshape(spec["shape"]))
        try:
            outputs = [np.ascontiguousarray(o) for o in run(arrays)]
        except Exception as exc:
            traceback.print_exc()
            send({"ok": False, "message": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        send({"ok": True, "outputs": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs]}, outputs)


if __name__ == "__main__":
    sys.exit(main())
