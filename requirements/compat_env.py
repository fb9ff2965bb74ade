"""Build a second virtual environment with another torch, to test the torch range we declare.

Used by ``make test-compat TORCH=<version>``. The environment gets that torch (CPU only), the
matching torchvision, every pin of requirements/dev.txt except torch and torchvision, and the
packages in editable mode, so the suite runs against the same code with a different torch.

Where torch comes from: with ``TORCH_INDEX`` set (e.g. PyTorch's CPU wheel index) pip installs
torch and its dependencies from there. Without it, pip takes the wheel from the default index
with ``--no-deps`` and then installs torch's own requirements minus the CUDA runtime (nvidia-*,
cuda-*, triton): those are gigabytes, and the CPU tests never load them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "requirements" / "dev.txt"
PACKAGES = ["mm-core", "mm-convert", "mm-qwen", "mm-glm", "mm-internvl", "mm-visualglm"]
# Requirements of the PyPI torch wheel that only a CUDA machine uses.
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton)", re.IGNORECASE)
PINNED_HERE = re.compile(r"^(torch|torchvision)\s*(==|>=|<|$)", re.IGNORECASE)


def torchvision_for(torch_version: str) -> str:
    """The torchvision release built against a torch 2.x release (2.M.P pairs with 0.(M+15).P)."""
    major, minor, patch = (int(p) for p in re.match(r"(\d+)\.(\d+)\.(\d+)", torch_version).groups())
    if major != 2:
        raise SystemExit(f"compat_env: no torchvision mapping for torch {torch_version}; pass a 2.x version")
    return f"0.{minor + 15}.{patch}"


def run(py: Path, *args: str) -> None:
    cmd = [str(py), "-m", "pip", "install", "-qq", "--no-warn-conflicts", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def torch_runtime_requirements(py: Path) -> list[str]:
    """torch's own install requirements (read from the installed wheel), without the CUDA runtime."""
    code = ("import json, importlib.metadata as m; "
            "print(json.dumps(m.requires('torch') or []))")
    reqs = json.loads(subprocess.run([str(py), "-c", code], check=True, capture_output=True,
                                     text=True).stdout)
    keep = []
    for r in reqs:
        name, _, marker = r.partition(";")
        if "extra ==" in marker or CUDA_ONLY.match(name.strip()):
            continue
        keep.append(r)
    return keep


def dev_pins_without_torch() -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in DEV.read_text().splitlines()]
    return [ln for ln in lines if ln and not PINNED_HERE.match(ln)]


def stamp_text(torch_version: str, index: str | None) -> str:
    packages = "".join((ROOT / "packages" / p / "pyproject.toml").read_text() for p in PACKAGES)
    return json.dumps({"torch": torch_version, "index": index, "dev": DEV.read_text(),
                       "packages": packages}, sort_keys=True)


def build(torch_version: str, env_dir: Path, index: str | None) -> None:
    py = env_dir / "bin" / "python"
    stamp = env_dir / ".mm-compat"
    want = stamp_text(torch_version, index)
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        print(f"compat_env: {env_dir} is up to date (torch {torch_version})")
        return
    if not py.exists():
        venv.create(env_dir, with_pip=True)
    tv = torchvision_for(torch_version)
    if index:
        run(py, f"torch=={torch_version}", f"torchvision=={tv}", "--index-url", index)
    else:
        run(py, "--no-deps", f"torch=={torch_version}", f"torchvision=={tv}")
        run(py, *torch_runtime_requirements(py))
    run(py, *dev_pins_without_torch(), *(arg for p in PACKAGES for arg in ("-e", str(ROOT / "packages" / p))))
    got = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], check=True,
                         capture_output=True, text=True).stdout.strip()
    if not got.startswith(torch_version):
        raise SystemExit(f"compat_env: {env_dir} has torch {got}, expected {torch_version}")
    stamp.write_text(want)
    print(f"compat_env: {env_dir} ready with torch {got}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", required=True, help="torch version, e.g. 2.11.0")
    ap.add_argument("--venv", required=True, type=Path, help="environment directory to create or update")
    args = ap.parse_args()
    build(args.torch, args.venv, os.environ.get("TORCH_INDEX") or None)


if __name__ == "__main__":
    sys.exit(main())
