"""``python -m services.drift``: run the drift service until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.drift.service import build
from services.drift.settings import DriftSettings
from streamml.service import run_service


def main() -> int:
    return run_service("drift", DriftSettings, build)


if __name__ == "__main__":
    sys.exit(main())
