"""YAML reading and writing used for every manifest, config and schema.

Reading is safe (no Python tags) and refuses anchors and aliases: archives are untrusted input, and aliases
are how a few hundred bytes of YAML expand into gigabytes ("billion laughs"). Writing is deterministic: the same
data always gives the same bytes.
"""

from __future__ import annotations

from typing import Any

import yaml


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(None, None, "YAML aliases are not allowed", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(None, None, "YAML anchors are not allowed", event.start_mark)
        return super().compose_node(parent, index)


class YamlError(ValueError):
    """The text is not valid YAML (or uses a feature we refuse). The message says where."""


def load(text: str | bytes) -> Any:
    """Parse one YAML document from untrusted text."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise YamlError(f"not UTF-8 text (byte {err.start})") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise YamlError(f"{problem}{where}") from None


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # never write anchors, even for repeated objects
        return True


def dump(data: Any) -> str:
    """Deterministic block-style YAML (keys in insertion order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)
