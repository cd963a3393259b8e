"""YAML reading and writing used for every manifest, config and schema.

Reading treats the text as untrusted (archives come from anywhere):

* safe tags only (no Python objects), and no anchors or aliases: aliases are how a few hundred bytes of YAML
  expand into gigabytes ("billion laughs");
* libyaml parses when it is available (``yaml.CSafeLoader``'s C parser), the pure-Python parser otherwise; either
  way the document is composed here, so the limits below hold on both paths and are enforced *while* the
  document is composed: a hostile document is refused after at most ``max_nodes`` nodes, not after it was built;
* per-document limits (:class:`YamlLimits`; the defaults are documented in docs/archive-format.md):

  ==================  ============  ==============================================================================
  limit               default       why this value
  ==================  ============  ==============================================================================
  ``max_chars``       16 MiB        the manifest cap of the archive reader; real model configs are < 1 MiB
  ``max_depth``       64            real manifests nest 3 levels, NeMo configs about 8; deep nesting is only
                                    useful to exhaust the stack (PyYAML composes and constructs recursively)
  ``max_nodes``       500,000       a manifest of 10,000 artifacts (the reader's member cap), each encrypted
                                    (13 props: the most the writer gives), is ~280,000 nodes; big model configs
                                    are tens of thousands. Reaching the cap takes about 2 s with libyaml
  ``max_scalar``      1 MiB         hashes, paths, descriptions and label lists are far shorter
  ``max_int_digits``  4,300         Python's own cap on int/str conversion (``sys.get_int_max_str_digits``):
                                    a longer integer could not even be printed
  ==================  ============  ==============================================================================

  Every refusal is a :class:`YamlError` naming the limit and the line and column; messages never echo a long
  value (they are cut to a few hundred characters). Values the safe constructors cannot build (a timestamp
  with month 13, an unhashable key) are YamlErrors too.

The pure-Python parser is about 7 times slower than libyaml (PyPI's PyYAML wheels include libyaml). The garbage
collector is paused while a document loads: the tree has no cycles, and collecting while it grows cost 2-3 times
the parse.

Writing is deterministic: the same data always gives the same bytes.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, MappingEndEvent, ScalarEvent, SequenceEndEvent, SequenceStartEvent, StreamEndEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from servicemaker.errors import bounded

MiB = 1024 * 1024
#: the longest problem text a YamlError carries (a hostile tag or value is cut in the middle)
MAX_PROBLEM_CHARS = 300


@dataclass(frozen=True)
class YamlLimits:
    """Per-document limits of :func:`load` (see the module docstring for why each value)."""

    max_chars: int = 16 * MiB  # text size (bytes for bytes input, characters for str input)
    max_depth: int = 64  # nested sequences/mappings
    max_nodes: int = 500_000  # scalars + sequences + mappings, keys included
    max_scalar: int = 1 * MiB  # characters of one scalar (and of one tag)
    max_int_digits: int = 4_300  # decimal digits of one integer, whatever base it is written in


DEFAULT_LIMITS = YamlLimits()


class YamlError(ValueError):
    """The text is not valid YAML (or uses a feature or size we refuse). The message says where."""


def _refuse(problem: str, mark: Any) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(None, None, problem, mark)


class _Hardened(Composer):
    """Composition with limits, for both parsers; construction that refuses huge or impossible values.

    Mixed in before the parser so its ``get_single_node`` (and not libyaml's, which would compose in C without
    limits and resolve aliases) builds the node tree from the parser's events. Safe loading has no path
    resolvers, so the resolver is asked about each node alone.
    """

    limits: YamlLimits = DEFAULT_LIMITS

    def _start(self, limits: YamlLimits) -> None:
        self.limits = limits
        self._nodes = 0
        self._depth = 0
        self._int_cap = 10 ** limits.max_int_digits

    def get_single_node(self) -> Any:
        self.get_event()  # StreamStart
        document = None
        if not self.check_event(StreamEndEvent):
            document = self.compose_document()
        if not self.check_event(StreamEndEvent):
            event = self.get_event()
            raise _refuse("expected a single document, but found another one", event.start_mark)
        self.get_event()
        return document

    def compose_document(self) -> Any:
        self.get_event()  # DocumentStart
        node = self.compose_node(None, None)
        self.get_event()  # DocumentEnd
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            raise _refuse("YAML aliases are not allowed", self.peek_event().start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise _refuse("YAML anchors are not allowed", event.start_mark)
        tag = getattr(event, "tag", None)
        if tag is not None and len(tag) > self.limits.max_scalar:
            raise _refuse(f"a tag of {len(tag)} characters (limit {self.limits.max_scalar})", event.start_mark)
        self._nodes += 1
        if self._nodes > self.limits.max_nodes:
            raise _refuse(f"the document has more than {self.limits.max_nodes} nodes (values, keys and "
                          "collections); refusing it", event.start_mark)
        if isinstance(event, ScalarEvent):
            if len(event.value) > self.limits.max_scalar:
                raise _refuse(f"a value of {len(event.value)} characters (limit {self.limits.max_scalar})",
                              event.start_mark)
            self.get_event()
            if tag is None or tag == "!":
                tag = self.resolve(ScalarNode, event.value, event.implicit)
            return ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        self._depth += 1
        if self._depth > self.limits.max_depth:
            raise _refuse(f"nesting deeper than {self.limits.max_depth} levels", event.start_mark)
        node = self._compose_sequence() if isinstance(event, SequenceStartEvent) else self._compose_mapping()
        self._depth -= 1
        return node

    def _compose_sequence(self) -> SequenceNode:
        start = self.get_event()
        tag = start.tag if start.tag not in (None, "!") else self.resolve(SequenceNode, None, start.implicit)
        node = SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        index = 0
        while not self.check_event(SequenceEndEvent):
            node.value.append(self.compose_node(node, index))
            index += 1
        node.end_mark = self.get_event().end_mark
        return node

    def _compose_mapping(self) -> MappingNode:
        start = self.get_event()
        tag = start.tag if start.tag not in (None, "!") else self.resolve(MappingNode, None, start.implicit)
        node = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        while not self.check_event(MappingEndEvent):
            key = self.compose_node(node, None)
            value = self.compose_node(node, key)
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        return node

    # -- construction -------------------------------------------------------------------------------------------
    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)  # type: ignore[misc]
        # e.g. a timestamp with month 13; '!!bool maybe', '!!int ""' and '!!timestamp nope' fail in PyYAML's own
        # constructors with KeyError, IndexError or AttributeError
        except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError) as err:
            raise ConstructorError(None, None, f"invalid {_kind(node)}: {err}", node.start_mark) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:
        body = node.value.replace("_", "").lstrip("+-")
        digits = len(body) - 2 if body[:2] in ("0x", "0b") else len(body)
        if digits > self.limits.max_int_digits:
            raise ConstructorError(None, None, f"an integer of {digits} digits (limit {self.limits.max_int_digits})",
                                   node.start_mark)
        value = SafeConstructor.construct_yaml_int(self, node)  # type: ignore[arg-type]
        if abs(value) >= self._int_cap:
            raise ConstructorError(None, None, f"an integer of more than {self.limits.max_int_digits} decimal "
                                   "digits", node.start_mark)
        return value


def _kind(node: Any) -> str:
    tag = str(getattr(node, "tag", "") or "")
    return "value" if not tag.startswith("tag:yaml.org,2002:") else tag.rsplit(":", 1)[-1] + " value"


class _PyLoader(_Hardened, yaml.SafeLoader):
    """Pure-Python parser (used where PyYAML was built without libyaml)."""


_PyLoader.add_constructor("tag:yaml.org,2002:int", _Hardened.construct_yaml_int)

if getattr(yaml, "CSafeLoader", None) is not None:
    class _CLoader(_Hardened, yaml.CSafeLoader):  # type: ignore[misc,valid-type]
        """libyaml's parser; composition and construction as above."""

        def __init__(self, stream: str) -> None:
            yaml.CSafeLoader.__init__(self, stream)

    _CLoader.add_constructor("tag:yaml.org,2002:int", _Hardened.construct_yaml_int)
    _LOADER: type = _CLoader
else:  # pragma: no cover - depends on how PyYAML was built
    _LOADER = _PyLoader


def load(text: str | bytes, limits: YamlLimits = DEFAULT_LIMITS, *, pure_python: bool = False) -> Any:
    """Parse one YAML document from untrusted text, within ``limits``.

    ``pure_python`` forces PyYAML's Python parser (for tests; the result is the same).
    """
    if len(text) > limits.max_chars:
        unit = "bytes" if isinstance(text, bytes) else "characters"
        raise YamlError(f"the text is {len(text)} {unit}, over the {limits.max_chars}-{unit[:-1]} limit for YAML")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise YamlError(f"not UTF-8 text (byte {err.start})") from None
    loader = None
    collecting = gc.isenabled()
    gc.disable()  # see the module docstring
    try:
        loader = (_PyLoader if pure_python else _LOADER)(text)  # the Python reader checks the text here
        loader._start(limits)
        return loader.get_single_data()
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        elif isinstance(err, yaml.reader.ReaderError):
            where = f" at character {err.position + 1}"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise YamlError(f"{bounded(str(problem), MAX_PROBLEM_CHARS)}{where}") from None
    finally:
        if loader is not None:
            loader.dispose()
        if collecting:
            gc.enable()


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # never write anchors, even for repeated objects
        return True


def dump(data: Any) -> str:
    """Deterministic block-style YAML (keys in insertion order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)
