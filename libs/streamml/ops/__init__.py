"""Operator tools: replay, dead-letter inspection and redrive, offset reset, tail, topics.

Each module holds the logic of one command as plain functions that return what they did
(plans, counts, before/after offsets); :mod:`streamml.ops.cli` turns them into typer
commands, prints the results and maps bad arguments to a one-line ``error: ...`` with
exit code 2. Nothing here runs inside a service.
"""

from __future__ import annotations
