"""Print the serving requirements from pyproject.toml, one per line, for the images to install.

    python docker/requirements.py        # CPU: the project's dependencies (onnxruntime, no torch)
    python docker/requirements.py gpu    # GPU: the same with onnxruntime swapped for the `gpu` extra

pyproject.toml stays the one list of what the service needs; the images install these and copy
the source tree as it is in the repository, so `python -m service` runs there as it does here.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(flavor: str = "cpu", pyproject: Path = PYPROJECT) -> list[str]:
    """The `dependencies` of pyproject.toml; for `gpu`, onnxruntime replaced by the `gpu` extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"])
    if flavor == "gpu":
        deps = [d for d in deps if re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0] != "onnxruntime"]
        deps += project["optional-dependencies"]["gpu"]
    elif flavor != "cpu":
        raise ValueError(f"unknown flavor {flavor!r}: cpu or gpu")
    return deps


if __name__ == "__main__":
    sys.stdout.write("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "cpu")) + "\n")
