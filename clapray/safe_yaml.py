"""Reading YAML that may be hostile: bounded size, depth and alias expansion, strict UTF-8, unique keys.

Every YAML a user hands clapray (run configs, sweep files, ``--set`` values) goes through
:func:`read_yaml_file` or :func:`load_yaml_text`, which refuse, with a one-line
:class:`~clapray.errors.ConfigError` naming the file and the line, what ``yaml.safe_load`` would accept
silently or only after minutes and gigabytes:

* a file larger than :data:`MAX_YAML_BYTES` (read no further than that);
* bytes that are not UTF-8 (a leading byte-order mark is allowed);
* a key given twice in one mapping, at any depth (``safe_load`` keeps the last one silently, e.g. a
  second ``optim:`` block replacing the first);
* more than :data:`MAX_ALIASES` aliases, a recursive alias, or a document whose aliases expand to more
  than :data:`MAX_NODES` nodes (the "billion laughs": 600 bytes that expand to 10^9 strings);
* nesting deeper than :data:`MAX_DEPTH`, or an integer literal longer than Python converts.

The checks run on PyYAML's node graph before any Python object is built, so a refused file costs
milliseconds and a few megabytes. Only the standard library and PyYAML are imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from clapray.errors import ConfigError

__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_NODES", "MAX_YAML_BYTES", "YamlLimitError", "load_yaml_text",
           "read_yaml_file"]

MAX_YAML_BYTES = 1 << 20
"""Largest YAML file read (1 MiB): the biggest shipped sweep is a few kilobytes."""
MAX_ALIASES = 100
"""Aliases (``*name``) allowed in one document; configs rarely need any."""
MAX_NODES = 100_000
"""Nodes of a document once every alias is expanded (what code walking the parsed value would visit)."""
MAX_DEPTH = 64
"""Nesting depth of collections; a config nests four or five levels."""


class YamlLimitError(yaml.YAMLError):
    """A document exceeds one of this module's limits (as opposed to plain malformed YAML)."""

    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts aliases and nesting while composing and refuses duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlLimitError(f"more than {MAX_ALIASES} aliases", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(f"collections nested more than {MAX_DEPTH} deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges defaults that explicit keys may override
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor reports it
                if first is not key_node.start_mark:
                    raise YamlLimitError(f"the key {str(key)[:60]!r} a second time in one mapping (first on "
                                         f"line {first.line + 1}); each key may appear once", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses to convert integer literals of more than 4300 digits
            raise YamlLimitError("an integer literal too long to be a number", node.start_mark) from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Any) -> None:
    """Refuse recursive aliases and documents that expand past :data:`MAX_NODES` (counted on the node
    graph, where an alias is a shared reference, in time linear in the document)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            sizes[key] = min(MAX_NODES + 1, 1 + sum(sizes[id(child)] for child in _children(node)))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YamlLimitError("a recursive alias (a collection that contains itself)", node.start_mark)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    if sizes[id(root)] > MAX_NODES:
        raise YamlLimitError(f"aliases that expand to more than {MAX_NODES} nodes", root.start_mark)


def _parse(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _config_error(source: str, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark is not None else "<file>"
    problem = getattr(err, "problem", None) or (str(err).splitlines() or ["malformed YAML"])[0]
    expected = "YAML within clapray's limits" if isinstance(err, YamlLimitError) else "valid YAML"
    return ConfigError(source, where, expected, None, got_text=problem)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document from ``text``; any problem is a one-line ConfigError naming ``source``."""
    try:
        return _parse(text)
    except yaml.YAMLError as err:
        raise _config_error(source, err) from None
    except RecursionError:  # a pathological document that slipped past the depth limit
        raise ConfigError(source, "<file>", "valid YAML", None, got_text="nesting too deep to read") from None


def read_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file within :data:`MAX_YAML_BYTES`, as strict UTF-8."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(source, "<file>", "an existing YAML file", None, got_text="no such file") from None
    except OSError as err:
        raise ConfigError(source, "<file>", "a readable YAML file", None, got_text=err.strerror or str(err)) from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(source, "<file>", f"a YAML file of at most {MAX_YAML_BYTES >> 20} MiB", None,
                          got_text="a larger file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(source, f"line {line}", "UTF-8 text", None,
                          got_text=f"the byte 0x{data[err.start]:02x}, which is not UTF-8 here") from None
    return load_yaml_text(text, source)
