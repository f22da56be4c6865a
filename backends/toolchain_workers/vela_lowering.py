"""Rewrites of the PyTorch program (arm toolchain venv) so the TFLite that litert-torch writes is one Vela can place.

torch.export GraphModule (ATen ops) -> vela_friendly -> the same function, two lowerings changed -> litert-torch
  mean(x, dim=(2, 3)) on NCHW [N, C, H, W]      -> avg_pool2d(x, (H, W)) (+ reshape to [N, C] without keepdim)
      litert-torch keeps that MEAN channel-first: Vela sees a reduction over the NHWC depth axis and leaves it to
      the CPU ("Unsupported depth-reduction"); AVERAGE_POOL_2D is an NPU op.
  permute(x, perm) of a 5-D x whose users all take one slice of its dim 0 (attention's qkv.permute(2, 0, 3, 1, 4)
      .unbind(0))                                -> per slice i: select(x, perm[0], i), then a 4-D permute
      With a batch above 1 (MobileViT's 4 patch positions) that TRANSPOSE is truly 5-D; Vela 5.2.0 crashes on it
      (SIGSEGV in its regor backend) instead of leaving it to the CPU.
All are exact rewrites (same function, other ops); the counts go into the manifest.
"""

from __future__ import annotations


def vela_friendly(module) -> tuple[object, dict[str, int]]:
    import torch

    graph = module.graph
    aten = torch.ops.aten
    fired = {"global_mean_to_avg_pool": 0, "permute_5d_split": 0}
    for node in list(graph.nodes):
        if node.op != "call_function" or not node.args or not hasattr(node.args[0], "meta"):
            continue
        value = node.args[0].meta.get("val")
        if not hasattr(value, "shape"):
            continue
        shape = [int(d) for d in value.shape]
        if node.target is aten.mean.dim and len(shape) == 4:
            dims = sorted(int(d) % 4 for d in node.args[1])
            keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            if dims != [2, 3] or node.kwargs.get("dtype") is not None:
                continue
            with graph.inserting_before(node):
                pooled = graph.call_function(aten.avg_pool2d.default, (node.args[0], shape[2:]))
                out = pooled if keepdim else graph.call_function(aten.reshape.default, (pooled, shape[:2]))
            node.replace_all_uses_with(out)
            graph.erase_node(node)
            fired["global_mean_to_avg_pool"] += 1
        elif node.target is aten.permute.default and len(shape) == 5:
            fired["permute_5d_split"] += _split_permute(graph, node, aten)
    graph.eliminate_dead_code()
    graph.lint()
    module.recompile()
    return module, {k: v for k, v in fired.items() if v}


def _split_permute(graph, node, aten) -> int:
    """permute -> unbind(0) / select(0, i) users, rewritten as select on the source dim + a 4-D permute; 1 if done."""
    perm = [int(p) % 5 for p in node.args[1]]
    slices = []  # (the node producing slice i, i)
    for user in node.users:
        if user.target is aten.unbind.int and int(user.args[1] if len(user.args) > 1 else 0) == 0:
            if not all(u.target.__name__ == "getitem" for u in user.users):
                return 0
            slices += [(u, int(u.args[1])) for u in user.users]
        elif user.target is aten.select.int and int(user.args[1]) == 0:
            slices.append((user, int(user.args[2])))
        else:
            return 0
    rest = [p - (p > perm[0]) for p in perm[1:]]
    for old, index in slices:
        with graph.inserting_before(old):
            picked = graph.call_function(aten.select.int, (node.args[0], perm[0], index))
            new = graph.call_function(aten.permute.default, (picked, rest))
        old.replace_all_uses_with(new)
    return 1
