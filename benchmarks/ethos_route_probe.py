"""The ExecuTorch-Arm route to Ethos-U, measured beside vdeploy's LiteRT route (run in the arm toolchain venv).

PT2 -> EthosUQuantizer (PT2E, calibration) -> to_edge_transform_and_lower(EthosUPartitioner(EthosUCompileSpec))
  -> .pte with the Vela command stream; prints delegated vs CPU (portable) ops, build seconds, numerics of the
  quantized program vs FP32 (the Ethos-U delegate itself cannot run on this host).
Usage: ~/.cache/vdeploy/toolchains/arm-*/bin/python benchmarks/ethos_route_probe.py MODEL.pt2 [ethos-u55-128]
"""

import sys
import time
from collections import Counter

import numpy as np
import torch


def main(path: str, accelerator: str = "ethos-u55-128") -> None:
    from executorch.backends.arm.ethosu import EthosUCompileSpec, EthosUPartitioner
    from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    program = torch.export.load(path)
    shape = next(
        n.meta["val"].shape
        for n in program.graph.nodes
        if n.op == "placeholder" and n.name in program.graph_signature.user_inputs
    )
    rng = np.random.default_rng(0)
    calib = [torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32)) for _ in range(16)]
    started = time.monotonic()
    spec = EthosUCompileSpec(accelerator)
    quantizer = EthosUQuantizer(spec).set_global(get_symmetric_quantization_config())
    module = torch.export.export(program.module(), (calib[0],)).module(check_guards=False)
    prepared = prepare_pt2e(module, quantizer)
    for x in calib:
        prepared(x)
    quantized = convert_pt2e(prepared)
    with torch.no_grad():
        ref, got = program.module()(calib[0]), quantized(calib[0])
    cos = float(torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0))
    edge = to_edge_transform_and_lower(
        torch.export.export(quantized, (calib[0],)), partitioner=[EthosUPartitioner(spec)]
    )
    ops = Counter(
        getattr(n.target, "__name__", str(n.target))
        for n in edge.exported_program().graph.nodes
        if n.op == "call_function"
    )
    edge.to_executorch()
    seconds = time.monotonic() - started
    delegated = sum(v for k, v in ops.items() if "call_delegate" in k)
    cpu = {k: v for k, v in ops.items() if "call_delegate" not in k and k != "getitem" and "quantize" not in k}
    print(
        f"{path} {accelerator}: build {seconds:.1f} s, delegate calls {delegated}, ops left to the CPU {cpu}, "
        f"quantized-program cosine vs FP32 {cos:.4f}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
