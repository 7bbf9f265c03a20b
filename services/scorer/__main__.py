"""``python -m services.scorer``: run the scorer until SIGTERM/SIGINT.

Start-up (models verified, ``model.control`` caught up) is :mod:`services.scorer.service`.
"""

from __future__ import annotations

import sys

from services.scorer.service import build
from services.scorer.settings import ScorerSettings
from streamml.service import run_service


def main() -> int:
    return run_service("scorer", ScorerSettings, build)


if __name__ == "__main__":
    sys.exit(main())
