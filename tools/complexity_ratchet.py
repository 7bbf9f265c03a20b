"""The complexity ratchet: the C901 relax list in pyproject.toml may only shrink.

ruff selects C901 (mccabe) with ``[tool.ruff.lint.mccabe] max-complexity``; a file whose
functions are still over it is listed in ``[tool.ruff.lint.per-file-ignores]`` with C901
and a comment naming the debt. This check runs ruff on each listed file with the relax
list switched off and fails when a listed file no longer needs its entry (or no longer
exists), so the entry is deleted in the same change that paid the debt.

Usage: ``python tools/complexity_ratchet.py`` (run by ``make lint``); exit code 1 names
the entries to delete.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULE = "C901"


def relaxed_files(pyproject: dict[str, object]) -> tuple[int, list[str]]:
    """The configured max-complexity and the per-file-ignores entries that relax C901."""
    lint = pyproject["tool"]["ruff"]["lint"]  # type: ignore[index]
    limit = int(lint["mccabe"]["max-complexity"])
    ignores: dict[str, list[str]] = lint.get("per-file-ignores", {})
    return limit, sorted(pattern for pattern, rules in ignores.items() if RULE in rules)


def still_over(limit: int, files: list[str]) -> set[str]:
    """The files (of ``files``) that have a function over ``limit``, ruff's relax list off."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", RULE,
         "--config", f"lint.mccabe.max-complexity={limit}", "--output-format", "json",
         "--exit-zero", *files],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    return {str(Path(hit["filename"]).relative_to(ROOT)) for hit in json.loads(result.stdout)}


def main() -> int:
    limit, patterns = relaxed_files(tomllib.loads((ROOT / "pyproject.toml").read_text()))
    missing = [p for p in patterns if not (ROOT / p).is_file()]
    present = [p for p in patterns if (ROOT / p).is_file()]
    over = still_over(limit, present) if present else set()
    paid = [p for p in present if p not in over]
    for pattern in missing:
        print(f"complexity ratchet: {pattern} is not a file: name one file per C901 entry")
    for pattern in paid:
        print(
            f"complexity ratchet: {pattern} has no function over {limit} any more: "
            f"delete its {RULE} entry from [tool.ruff.lint.per-file-ignores] in pyproject.toml"
        )
    if not missing and not paid:
        print(f"complexity ratchet: {len(patterns)} file(s) still relaxed, each still needs it")
    return 1 if missing or paid else 0


if __name__ == "__main__":
    sys.exit(main())
