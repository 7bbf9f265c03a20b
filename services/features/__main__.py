"""``python -m services.features``: run the features service until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.features.service import build
from services.features.settings import FeaturesSettings
from streamml.service import run_service


def main() -> int:
    return run_service("features", FeaturesSettings, build)


if __name__ == "__main__":
    sys.exit(main())
