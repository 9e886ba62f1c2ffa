"""YAML loading for the exporter's own files: PyYAML's safe loader, refusing duplicate keys.

PyYAML keeps the last of two equal keys in one mapping, so a second ``api_key_file:`` or a second
basic-auth user would silently replace the first. Both config readers use :func:`load` instead,
which raises a ``ConstructorError`` whose problem starts with ``duplicate key``.
"""

from __future__ import annotations

from typing import Any

import yaml

DUPLICATE_KEY = "duplicate key"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[str] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{DUPLICATE_KEY} {key!r}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(text: str) -> Any:
    """Parse one YAML document with the safe loader; a duplicate key is a ConstructorError."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
