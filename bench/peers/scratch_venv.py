"""
The peers' scratch venv: a virtual environment outside the repository with Cellpose 3 and
scikit-image, so that det3d itself depends on neither.

torch is pinned and installed *first* (the CPU wheel these machines hold); cellpose's own
requirement ``torch>=1.6`` then finds it satisfied. Before installing cellpose, a
``pip install --dry-run --report`` checks that pip would install no torch and no CUDA package
(``nvidia-*``, ``triton``): an unpinned torch would pull gigabytes of CUDA wheels.

The venv is reused when its stamp (``peers-venv.json``) names the same pins; a folder that exists
without that stamp, or with other pins, is left untouched and reported.
"""

import json
import os
import subprocess
import sys
from typing import Dict, List

TORCH = "torch==2.13.0"
CELLPOSE = "cellpose==3.1.1.2"
SKIMAGE = "scikit-image==0.26.0"
PINS = [TORCH, CELLPOSE, SKIMAGE]
STAMP = "peers-venv.json"
_FORBIDDEN_PREFIXES = ("torch", "nvidia-", "triton")


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def _run(cmd: List[str], what: str) -> str:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def _planned_installs(py: str, reqs: List[str], report: str) -> List[Dict[str, str]]:
    """Names and versions pip would install for ``reqs`` (``pip install --dry-run --report``)."""
    _run([py, "-m", "pip", "install", "-q", "--dry-run", "--report", report, *reqs], "pip dry-run")
    with open(report) as f:
        items = json.load(f).get("install", [])
    return [
        {"name": it["metadata"]["name"].lower(), "version": it["metadata"]["version"]}
        for it in items
    ]


def _read_stamp(venv: str):
    path = os.path.join(venv, STAMP)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def ensure_peers_venv(venv: str) -> Dict[str, str]:
    """
    Creates (or reuses) the scratch venv at ``venv`` with :data:`PINS`.

    Returns:
        the installed versions ``{"python", "torch", "cellpose", "skimage", ...}``.

    Raises:
        FileExistsError: ``venv`` exists but is not a venv this function made with these pins.
        RuntimeError: pip failed, or would install torch / CUDA packages besides the pinned torch.
    """
    venv = os.path.abspath(venv)
    stamp = _read_stamp(venv)
    if stamp is not None and stamp.get("pins") == PINS:
        return stamp["versions"]
    if os.path.exists(venv) and (stamp is not None or os.listdir(venv)):
        why = f"its {STAMP} names other pins {stamp.get('pins')}" if stamp else f"it has no {STAMP}"
        raise FileExistsError(
            f"--peers-venv {venv} exists but {why} (wanted {PINS}); remove it or name another "
            "folder"
        )
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", venv], "creating the scratch venv")
    py = venv_python(venv)
    _run([py, "-m", "pip", "install", "-q", TORCH], f"pip install {TORCH}")
    planned = _planned_installs(py, PINS, os.path.join(venv, "pip-dry-run.json"))
    bad = [p for p in planned if p["name"].startswith(_FORBIDDEN_PREFIXES)]
    if bad:
        raise RuntimeError(
            f"pip would install {bad} with {PINS} in {venv}; refusing (torch must stay {TORCH}, "
            "no CUDA packages)"
        )
    print(f"pip will add {len(planned)} packages: " + ", ".join(p["name"] for p in planned))
    _run([py, "-m", "pip", "install", "-q", *PINS], "pip install of the peers")
    out = _run(
        [
            py,
            "-c",
            "import json, sys, importlib.metadata as md, torch, cellpose.models, skimage; "
            "print(json.dumps({'python': sys.version.split()[0], **{p: md.version(p) for p in "
            "('torch', 'cellpose', 'scikit-image', 'scipy', 'numpy', 'opencv-python-headless')}}))",
        ],
        "importing the peers",
    )
    versions = json.loads(out.strip().splitlines()[-1])
    if not versions["torch"].startswith(TORCH.split("==")[1]):
        raise RuntimeError(f"{venv}: torch {versions['torch']} instead of {TORCH}")
    tmp = os.path.join(venv, STAMP + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"pins": PINS, "versions": versions}, f, indent=1)
    os.replace(tmp, os.path.join(venv, STAMP))
    return versions


if __name__ == "__main__":
    print(ensure_peers_venv(sys.argv[1] if len(sys.argv) > 1 else "/work/scratch/peers-venv"))
