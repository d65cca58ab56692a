"""`detforge bench latency|train|data|stability key=value ...`."""

from __future__ import annotations

from typing import Any

from detforge.config import ConfigError

ACTIONS = ("latency", "train", "data", "stability")


def bench_command(action: str, args: dict[str, Any]) -> int:
    if action == "latency":
        from detforge.bench.latency import run_latency

        run_latency(args)
    elif action == "train":
        from detforge.bench.train_speed import run_train_speed

        run_train_speed(args)
    elif action == "data":
        from detforge.bench.data_speed import run_data_speed

        run_data_speed(args)
    elif action == "stability":
        from detforge.bench.stability import run_stability

        run_stability(args)
    else:
        raise ConfigError(f"unknown bench action '{action}'; allowed: {', '.join(ACTIONS)}")
    return 0
