"""Typed reading of `detforge bench ACTION key=value ...` arguments: every action declares
its keys and defaults; an unknown key or a bad value is refused with the allowed ones."""

from __future__ import annotations

from typing import Any

from detforge.config import ConfigError, action_options


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
    return action_options(f"bench {action}", args, defaults)
