"""The config reference, generated from the schema: JSON Schema and the README's key table.

:func:`config_schema` is what ``pytc config schema`` prints (for editor autocompletion);
:func:`iter_fields` walks every leaf key with its default and description, and
:func:`reference_markdown` renders them as the README's table (``make docs``).
"""

from __future__ import annotations

from pydantic import BaseModel

from pytc.config.schema import PytcConfig, _as_model, _list_item_model


def config_schema() -> dict:
    """JSON Schema of the config (for editor autocompletion and the README reference)."""
    return PytcConfig.model_json_schema()


def iter_fields(model: type[BaseModel] = PytcConfig, prefix: str = ""):
    """Yield ``(dotted_key, default, description)`` for every leaf config key (JSON-able defaults)."""
    from pydantic_core import to_jsonable_python

    for name, field in model.model_fields.items():
        sub, item = _as_model(field.annotation), _list_item_model(field.annotation)
        if sub is not None:
            yield from iter_fields(sub, f"{prefix}{name}.")
            continue
        default = None if field.is_required() else to_jsonable_python(field.get_default(call_default_factory=True))
        yield f"{prefix}{name}", default, field.description or ""
        if item is not None:
            yield from iter_fields(item, f"{prefix}{name}[].")


def reference_markdown() -> str:
    """Markdown table of every config key with its default and meaning (for the README)."""
    import json

    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, desc in iter_fields():
        shown = json.dumps(default) if default is not None else "null"
        rows.append(f"| `{key}` | `{shown}` | {desc} |")
    return "\n".join(rows) + "\n"
