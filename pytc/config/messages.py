"""One-line messages for config mistakes.

:func:`format_validation_error` turns a pydantic ``ValidationError`` into one line that names each
wrong key (dotted, ``data.targets[0].name``), what was expected and what was given (quoted, cut to
about 80 characters by :func:`_short`), suggests the closest key or choice ("did you mean ..."),
and says where the value came from (the file, an override, an environment variable).
"""

from __future__ import annotations

import difflib
import re
import reprlib
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError

from pytc.config.schema import PytcConfig, _as_model, _list_item_model

_QUOTE_CHARS = 80  # longest value quoted in an error message
_MAX_MESSAGES = 5  # a list of 10,000 bad values is one line, not 10,000 messages
_QUOTE = reprlib.Repr()  # bounded repr: a huge value is never rendered in full, only its start
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxtuple = 2, 8, 4, 8
_QUOTE.maxstring = _QUOTE.maxother = _QUOTE.maxlong = 2 * _QUOTE_CHARS


def _short(value: Any, quote: bool = True) -> str:
    """``repr(value)`` (or ``str`` when not ``quote``) cut to about 80 characters with "…"."""
    text = _QUOTE.repr(value) if quote else str(value)[: 2 * _QUOTE_CHARS]
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 1] + "…"


def _submodel(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, list[str]]:
    """Walk ``loc`` through nested models; return the model reached (None past a leaf) and the key parts."""
    parts: list[str] = []
    current: type[BaseModel] | None = model
    item: type[BaseModel] | None = None  # model of list items, when the last key was a list of models
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            current, item = item, None
        elif current is not None and part in current.model_fields:
            parts.append(part)
            ann = current.model_fields[part].annotation
            current, item = _as_model(ann), _list_item_model(ann)
        else:
            parts.append(str(part))
            current = item = None
    return current, parts


def _dotted(parts: list[str]) -> str:
    return ".".join(parts).replace(".[", "[")


def format_validation_error(err: ValidationError, origin: str, sources: dict[str, str] | None = None) -> str:
    """One line for all of ``err``'s problems (at most five, then "and N more"), each naming its key.

    An unknown key gets a did-you-mean (or the valid keys), a near-miss choice its closest value,
    and each problem is attributed to where its value came from: ``sources`` maps dotted keys to
    that (an override, an environment variable), everything else is blamed on ``origin``.
    """
    messages: list[tuple[str, str]] = []  # (where the value came from, message)
    seen: set[str] = set()
    for e in err.errors():
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            parent, parts = _submodel(PytcConfig, loc[:-1])
            key = _dotted([*parts, str(loc[-1])])
            hint = ""
            if parent is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1, cutoff=0.6)
                if close:
                    hint = f" — did you mean {_dotted([*parts, close[0]])}?"
                else:
                    hint = f" (valid keys: {', '.join(parent.model_fields)})"
            msg = f"{key}: unknown key{hint}"
        else:
            # Union members add a type tag to loc (e.g. 'list[str]'): report the field once, with its type.
            tagged = next((i for i, p in enumerate(loc) if _is_type_tag(p)), None)
            _, parts = _submodel(PytcConfig, loc if tagged is None else loc[:tagged])
            key = _dotted(parts) or "config"
            if key in seen:
                continue
            given = e.get("input")
            if tagged is not None:
                text = f"expected {_type_name(_annotation_at(loc[:tagged]))}"
            else:
                text = e["msg"].removeprefix("Value error, ")
            msg = f"{key}: {text}" + ("" if e["type"] == "missing" or isinstance(given, dict) else f", got {_short(given)}")
            msg += _did_you_mean(e, loc) if tagged is None else ""
        seen.add(key)
        messages.append((_source_of(key, sources or {}, origin), msg))
    more = f"; and {len(messages) - _MAX_MESSAGES} more" if len(messages) > _MAX_MESSAGES else ""
    messages = messages[:_MAX_MESSAGES]
    if len({where for where, _ in messages}) == 1:
        return f"{messages[0][0]}: " + "; ".join(msg for _, msg in messages) + more
    return "; ".join(f"{where}: {msg}" for where, msg in messages) + more


def _source_of(key: str, sources: dict[str, str], origin: str) -> str:
    """Where the value at dotted ``key`` (``data.targets[0]`` style) came from."""
    plain = re.sub(r"\[\d+\]", "", key)
    for k in sorted(sources, key=len, reverse=True):
        if plain == k or plain.startswith(k + "."):  # a section-wide check is not blamed on one key's source
            return sources[k]
    if _submodel(PytcConfig, tuple(plain.split(".")))[0] is None:
        # Not a section: a value (or an unknown key) that an override reached *below*, e.g.
        # `data.batch_size.foo=1` turns data.batch_size into a mapping — that override is to blame.
        below = [k for k in sources if k.startswith(plain + ".")]
        if below:
            return sources[min(below)]
    return origin


def _did_you_mean(error: dict, loc: tuple) -> str:
    """`` — did you mean 'x'?`` when a choice field (Literal or Enum) got a near miss, else ``""``."""
    import enum
    import typing

    given = error.get("input")
    if error["type"] not in ("literal_error", "enum") or not isinstance(given, str):
        return ""
    ann = _annotation_at(loc)
    if typing.get_origin(ann) is Union:  # Optional[choice]: the choices are those of the non-null member
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = members[0] if len(members) == 1 else None
    if typing.get_origin(ann) is Literal:
        choices = [str(a) for a in typing.get_args(ann)]
    elif isinstance(ann, type) and issubclass(ann, enum.Enum):
        choices = [str(m.value) for m in ann]
    else:
        return ""
    close = difflib.get_close_matches(given, choices, n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool", "none", "literal", "function-after", "list"}
        or part.startswith("literal[")
    )


def _annotation_at(loc: tuple) -> Any:
    model: Any = PytcConfig
    ann: Any = None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = ann
    return ann


def _type_name(ann: Any) -> str:
    import typing

    if ann is None or ann is type(None):
        return "null"
    args = typing.get_args(ann)
    if typing.get_origin(ann) is Union:
        return " | ".join(_type_name(a) for a in args)
    if typing.get_origin(ann) is Literal:
        return " | ".join(repr(a) for a in args)
    if args:
        return f"{typing.get_origin(ann).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann))

