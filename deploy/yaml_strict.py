"""YAML data files read strictly: the target catalogue (and, later, release files).

file bytes -> size limit -> UTF-8 (else the line of the first bad byte) -> PyYAML SafeLoader with limits
(nesting depth, alias count, expanded node count: no alias bomb) and duplicate keys refused -> plain data
Every refusal is a YamlRefused naming the line, never a RecursionError, MemoryError or UnicodeDecodeError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.reader import ReaderError

MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class YamlLimits:
    max_bytes: int = 4 << 20  # the shipped catalogue is ~54 KB
    max_depth: int = 32  # nested mappings/sequences (the catalogue needs ~6)
    max_aliases: int = 64  # `*name` references in one file (the catalogue uses none)
    max_nodes: int = 500_000  # nodes after expanding every alias: what a consumer would walk


class YamlRefused(ValueError):
    """A file refused by the strict loader; `line` is 1-based (0 when no line applies)."""

    def __init__(self, message: str, line: int = 0):
        super().__init__(f"line {line}: {message}" if line else message)
        self.reason = message
        self.line = line


def load_yaml(path: Path, limits: YamlLimits = YamlLimits()) -> Any:
    """The data in a YAML file; OSError when it cannot be read, YamlRefused when it is not strict YAML data."""
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise YamlRefused(f"the file is {size} bytes, over the {limits.max_bytes} byte limit for a data file")
    return loads_yaml(path.read_bytes(), limits)


def loads_yaml(data: bytes | str, limits: YamlLimits = YamlLimits()) -> Any:
    if isinstance(data, bytes):
        if len(data) > limits.max_bytes:
            raise YamlRefused(f"the text is {len(data)} bytes, over the {limits.max_bytes} byte limit")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise YamlRefused(f"byte 0x{data[exc.start]:02x} is not UTF-8 (save the file as UTF-8)", line) from None
    else:
        text = data
    loader = None
    try:
        loader = _StrictLoader(text, limits)
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expanded_size(root, limits)
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise YamlRefused(f"not valid YAML: {problem}", mark.line + 1 if mark else 0) from None
    except ReaderError as exc:  # a control character: a position, no mark
        line = text[: exc.position].count("\n") + 1
        raise YamlRefused(f"character #x{exc.character:04x} is not allowed in YAML", line) from None
    except yaml.YAMLError as exc:
        raise YamlRefused(f"not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str, limits: YamlLimits):
        super().__init__(stream)
        self.limits, self.depth, self.aliases = limits, 0, 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            self.aliases += 1
            if self.aliases > self.limits.max_aliases:
                line = self.peek_event().start_mark.line + 1
                raise YamlRefused(
                    f"more than {self.limits.max_aliases} aliases (*name): refused as an alias bomb", line
                )
        self.depth += 1
        try:
            if self.depth > self.limits.max_depth:
                line = self.peek_event().start_mark.line + 1
                raise YamlRefused(f"nesting deeper than {self.limits.max_depth} levels", line)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen = {}  # key -> the line it was first given at
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeConstructor names it below
                    continue
                if first != key_node.start_mark.line + 1:
                    raise YamlRefused(
                        f"duplicate key {key!r} (first given at line {first})", key_node.start_mark.line + 1
                    )
        return super().construct_mapping(node, deep)


def _check_expanded_size(root: Node, limits: YamlLimits) -> None:
    """Count the nodes a consumer would see with every alias expanded (a shared node counts each time it is
    referenced); a recursive alias (an anchor inside itself) is refused. Iterative: aliases can nest deeper than
    the text does."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # expanded, children not all counted yet: the current path
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise YamlRefused("an alias refers to its own anchor (a recursive structure)", node.start_mark.line + 1)
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[id(node)] > limits.max_nodes:
            raise YamlRefused(
                f"expands to more than {limits.max_nodes} nodes through aliases: refused as an alias bomb",
                node.start_mark.line + 1,
            )


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []
