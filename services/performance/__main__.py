"""``python -m services.performance``: run the performance service until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.performance.service import build
from services.performance.settings import PerformanceSettings
from streamml.service import run_service


def main() -> int:
    return run_service("performance", PerformanceSettings, build)


if __name__ == "__main__":
    sys.exit(main())
