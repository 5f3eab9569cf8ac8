"""Field types and base models that enforce the JSON rules of SPEC §1.2 for both processes.

Request models are strict (no ``"5"`` for an integer, no ``1`` for a boolean) with the two
relaxations the contract asks for: integers written as ``5.0`` and ``null`` meaning "absent".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

MAX_STRING = 1024
MAX_ARRAY = 256
MAX_DEPTH = 32

# Python's whitespace (``str.isspace``) spelled out, so that the JSON Schema patterns published in
# the OpenAPI document (ECMA-262 regexes, whose ``\s`` differs) mean what the validators do.
WHITESPACE_CLASS = r"\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NON_BLANK_PATTERN = f"[^{WHITESPACE_CLASS}]"  # unanchored: at least one non-whitespace character


def _json_int(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain a non-whitespace character")
    return value


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


JsonInt = Annotated[int, BeforeValidator(_json_int)]
NonBlank = Annotated[
    str,
    AfterValidator(_not_blank),
    Field(max_length=MAX_STRING, json_schema_extra={"pattern": NON_BLANK_PATTERN}),
]
Name200 = Annotated[
    str,
    AfterValidator(_not_blank),
    Field(min_length=1, max_length=200, json_schema_extra={"pattern": NON_BLANK_PATTERN}),
]
StrList = Annotated[
    list[Annotated[str, Field(max_length=MAX_STRING)]],
    Field(max_length=MAX_ARRAY),
    AfterValidator(_dedupe),
]

_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


def _labels(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 64:
        raise ValueError("at most 64 labels")
    for key, item in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"label key {key!r} must match {_LABEL_KEY.pattern}")
        if len(item) > 256:
            raise ValueError(f"label {key!r} is longer than 256 characters")
    return value


Labels = Annotated[
    dict[str, str],
    AfterValidator(_labels),
    Field(
        json_schema_extra={
            "maxProperties": 64,
            "propertyNames": {"pattern": _LABEL_KEY.pattern},
            "additionalProperties": {"type": "string", "maxLength": 256},
        }
    ),
]

# ASCII digits only, the whole text: ``\d`` would take other scripts' digits and ``$`` a final
# newline.
_DECIMAL_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def _amount(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("must be a number or a decimal string")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be finite")
        amount = Decimal(str(value))
    elif isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    else:
        raise ValueError("must be a number or a decimal string like '12.50'")
    if amount < 0:
        raise ValueError("must be ≥ 0")
    return amount


Amount = Annotated[
    Decimal,
    BeforeValidator(_amount),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _DECIMAL_TEXT.pattern},
            ]
        }
    ),
]


def json_depth(value: Any, level: int = 1) -> int:
    """Nesting depth of a JSON value: the value itself is level 1 (SPEC §1.2)."""
    if isinstance(value, dict):
        return max((json_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((json_depth(v, level + 1) for v in value), default=level)
    return level


def _opaque_object(value: dict[str, Any]) -> dict[str, Any]:
    if json_depth(value) > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
    return value


OpaqueObject = Annotated[dict[str, Any], AfterValidator(_opaque_object)]


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class RequestModel(WireModel):
    """A request body or nested request object.

    ``null`` for an optional field means "absent", except for the fields a PATCH type declares
    ``T | null`` (listed in ``clearable``, wire names), where it clears the value.
    """

    model_config = ConfigDict(strict=True)
    clearable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in cls.clearable}
        return data

    def sent(self) -> set[str]:
        """Python names of the fields the client actually sent."""
        return set(self.model_fields_set)


def error_path(loc: Iterable[int | str]) -> str:
    """``("endpoints", 1, "providerKey")`` → ``endpoints[1].providerKey``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and not str(part).startswith(("function-", "constrained-")):
            out += f".{part}" if out else str(part)
    return out


def validation_details(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """One ``{field, message}`` per problem, every problem reported (SPEC §1.6)."""
    details: list[dict[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p and "]" in p)]
        path = error_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        details.append({"field": path, "message": message})
    return details


def parse_decimal_text(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - stored values are always valid
        raise ValueError(text) from exc
