"""Probe the local server: exit 0 when /health/live (or /health/ready) answers 200, else 1.

    python docker/healthcheck.py          # liveness: the images' HEALTHCHECK
    python docker/healthcheck.py ready    # readiness: the bundle is loaded and warmed up

The port comes from the service's own settings (PORT, .env), so the probe follows the server's
configuration in a container and natively alike (loadtest/topology.py runs it on each replica).
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import get_settings  # noqa: E402

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def probe(kind: str = "live", timeout_s: float = 2.0) -> bool:
    settings = get_settings()
    host = "127.0.0.1" if settings.host in WILDCARDS else settings.host
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.port}/health/{kind}", timeout=timeout_s) as reply:
            return reply.status == 200
    except OSError:  # refused, timed out, or an HTTP error status
        return False


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "live"
    if kind not in ("live", "ready"):
        sys.exit(f"usage: {sys.argv[0]} [live|ready]")
    sys.exit(0 if probe(kind) else 1)
