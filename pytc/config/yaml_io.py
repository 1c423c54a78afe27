"""The one strict, bounded YAML reader every config goes through.

:func:`parse_yaml` reads one document with PyYAML's safe constructors (plain values only) and
refuses, with a one-line :class:`~pytc.errors.ConfigError`, what a config must never be: Python or
unknown tags, duplicate keys, recursive aliases, documents past :data:`MAX_CONFIG_VALUES` values
(aliases counted, never expanded) or :data:`MAX_CONFIG_DEPTH` levels. :func:`read_yaml` reads a
config file through it: a regular file (never a FIFO or device) of at most :data:`MAX_CONFIG_BYTES`,
UTF-8, holding a mapping of sections. Config files, ``_base_`` files, CLI overrides and a
checkpoint's stored config are all read this way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from pytc.config.messages import _short
from pytc.errors import ConfigError

# Real configs are a few KiB, a handful of levels deep and hold hundreds of values. These caps keep a
# wrong file (a data volume, /dev/zero) or a hostile one (an alias bomb) to well under a second and a
# few MB of memory; libyaml composes ~2 bytes per node at ~5 µs, so 256 KiB is the worst case of ~0.7 s.
MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_VALUES = 50_000  # values after YAML aliases are expanded (counted without expanding them)
MAX_CONFIG_DEPTH = 32  # nesting levels; a config uses four or five

# libyaml when present (same safe constructors, ~10x faster); pure Python otherwise.
_SafeBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STANDARD_TAG = "tag:yaml.org,2002:"
_PYTHON_TAG = _STANDARD_TAG + "python/"


class _Refused(Exception):
    """A YAML document pytc will not read; the message lacks only where it came from."""


class _ConfigLoader(_SafeBase):  # type: ignore[misc,valid-type]
    """The safe loader (plain YAML values only) with unknown and Python tags told apart."""

    def construct_undefined(self, node):  # noqa: D102 - called for every tag without a constructor
        tag, line = node.tag, node.start_mark.line + 1
        if tag.startswith(_STANDARD_TAG):
            tag = "!!" + tag[len(_STANDARD_TAG):]
        if node.tag.startswith(_PYTHON_TAG):
            raise _Refused(f"Python object tags are not allowed in configs ({_short(tag, quote=False)} on line "
                           f"{line}); use plain YAML values")
        raise _Refused(f"unknown YAML tag {_short(tag)} on line {line}; configs take plain YAML values, "
                       "remove the tag")


_ConfigLoader.add_constructor(None, _ConfigLoader.construct_undefined)


def _check_nodes(root: yaml.Node) -> None:
    """Refuse duplicate keys, deep nesting, recursive aliases and alias expansion past the caps.

    Works on the composed node graph, where an alias is a second reference to the same node: sizes
    are summed per node once (memoised), so a "billion laughs" document is measured, never expanded.
    """
    sizes: dict[int, int] = {}  # id(node) -> values once expanded
    ancestors: set[int] = set()
    shared = False  # reached a node twice: aliases are in play
    stack: list[tuple[yaml.Node, int, str, bool]] = [(root, 0, "", False)]
    while stack:
        node, depth, where, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            ancestors.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_CONFIG_VALUES:
                how = "YAML aliases expand it to" if shared else "it holds"
                raise _Refused(f"{how} more than {MAX_CONFIG_VALUES:,} values (line {node.start_mark.line + 1}); "
                               "a config needs far fewer, write the values out")
            continue
        if key in sizes:
            shared = True
            continue
        if key in ancestors:
            raise _Refused(f"a YAML alias refers to itself (line {node.start_mark.line + 1}); remove the alias")
        if depth > MAX_CONFIG_DEPTH:
            raise _Refused(f"nested more than {MAX_CONFIG_DEPTH} levels deep (line {node.start_mark.line + 1})")
        ancestors.add(key)
        stack.append((node, depth, where, True))
        if isinstance(node, yaml.MappingNode):
            _check_duplicates(node, where)
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                stack += [(v, depth + 1, f"{where}.{name}" if where else name, False), (k, depth + 1, where, False)]
        else:
            stack += [(c, depth + 1, where, False) for c in reversed(children)]


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _check_duplicates(node: yaml.MappingNode, where: str) -> None:
    # `<<: *base` merges are YAML's way to share settings: keys next to a merge override it, legitimately.
    first: dict[tuple[str, str], int] = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == _MERGE_TAG:
            continue
        line = k.start_mark.line + 1
        if (k.tag, k.value) in first:
            inside = f" in {where}" if where else ""
            raise _Refused(f"duplicate key {_short(k.value)}{inside} at line {line} (first at line "
                           f"{first[k.tag, k.value]}); keep one of them")
        first[k.tag, k.value] = line


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document of plain values, refusing what a config must never be.

    Safe constructors only (no Python objects), duplicate keys, unknown tags, recursive aliases and
    documents past :data:`MAX_CONFIG_VALUES` values or :data:`MAX_CONFIG_DEPTH` levels are refused.

    Args:
        text: the YAML text.
        source: where it came from (a file name, ``override '...'``), to start error messages.

    Returns:
        The parsed value (``None`` for an empty document).

    Raises:
        ConfigError: one line naming ``source`` and the line of the problem.
    """
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    except _Refused as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}:{where} invalid YAML ({_short(problem, quote=False)}); fix the syntax") from None
    except RecursionError:  # the pure-Python parser recurses per nesting level
        raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    """Read a config file: a regular file (never a FIFO or device), at most MAX_CONFIG_BYTES, UTF-8."""
    try:
        # stat, not open: opening a FIFO blocks until a writer appears, and /dev/zero never ends.
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; check the path") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path} ({err.strerror}); fix the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is a directory; give a YAML config file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is {_file_kind(st.st_mode)}, not a regular file; give a YAML config file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {st.st_size / 2**20:.1f} MiB; a config file must be under "
                          f"{MAX_CONFIG_BYTES // 1024} KiB — is it the right file?")
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since the stat, opening still returns.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ConfigError(f"cannot read config file {path} ({err.strerror}); fix the path") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ConfigError(f"{path} is not a regular file; give a YAML config file")
        raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows meanwhile
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES // 1024} KiB; a config file must be smaller")
    if b"\0" in raw:
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        raise ConfigError(f"{path} holds binary data (a NUL byte on line {line}), not UTF-8 YAML text; "
                          "give a YAML config file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
                          "save it as UTF-8") from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def read_yaml(path: Path) -> dict:
    """Read a config file (or a checkpoint's ``config.yaml``) into a dict of sections.

    Raises:
        ConfigError: unreadable, not a regular file, too large, not UTF-8, invalid or refused YAML
            (see :func:`parse_yaml`), or not a mapping.
    """
    data = parse_yaml(_read_text(path), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data
