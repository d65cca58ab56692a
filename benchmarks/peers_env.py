"""Create (once) the separate virtual environment that holds the peers the benchmarks compare
against: Ultralytics, installed without touching detforge's own environment. It reuses this
interpreter's torch/numpy/opencv through a .pth file, so both sides run the same kernels.

    python benchmarks/peers_env.py [--venv /tmp/peers]   -> prints the peers' python
"""

from __future__ import annotations

import argparse
import site
import subprocess
import sys
from pathlib import Path

ULTRALYTICS = "ultralytics==8.4.190"
# Ultralytics' own small dependencies that detforge's environment does not already provide
SMALL_DEPS = ["ultralytics-thop", "psutil", "polars", "requests", "py-cpuinfo"]


def ensure_peers(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pth = Path(subprocess.check_output([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                           text=True).strip()) / "_shared_torch.pth"
        pth.write_text("\n".join(site.getsitepackages()) + "\n")
    probe = subprocess.run([str(python), "-c", "import ultralytics"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", ULTRALYTICS, *SMALL_DEPS], check=True)
    return python


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default="/tmp/peers")
    print(ensure_peers(Path(parser.parse_args().venv)))
