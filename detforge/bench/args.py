"""Typed reading of `detforge bench ACTION key=value ...` arguments: every action declares
its keys and defaults; an unknown key or a bad value is refused with the allowed ones."""

from __future__ import annotations

import difflib
from typing import Any

from detforge.config import ConfigError


def int_list(value: Any, key: str) -> list[int]:
    """1 | "1,2,4" | [1, 2] -> [1, 2, 4]; every entry a positive integer."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
    try:
        out = [int(v) for v in items if str(v) != ""]
    except ValueError:
        raise ConfigError(f"bad value {value!r} for '{key}': expected integers like 1,2,4,8") from None
    if not out or min(out) < 0:
        raise ConfigError(f"bad value {value!r} for '{key}': expected integers >= 0 like 1,2,4,8")
    return out


def as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"bad value {value!r} for '{key}': expected true or false")


def resolve(action: str, args: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` overlaid with ``args``; values keep the type of their default."""
    out = dict(defaults)
    for key, value in args.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"bench {action}: unknown key '{key}'{hint} Allowed: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, bool):
            value = as_bool(value, key)
        elif isinstance(default, int) and not isinstance(value, int):
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"bench {action}: bad value {value!r} for '{key}': expected an integer") from None
        out[key] = value
    return out
