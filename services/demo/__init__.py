"""The end-to-end demo: ``streamml demo run`` (``make demo``).

One command starts the local broker, provisions the topics, trains and signs the demo
models, starts the four services as separate processes, feeds them synthetic card
transactions (with late labels, duplicates, malformed records and an injected drift),
shows them live, and ends with a summary of checked claims and an HTML report.

Modules: :mod:`.plan` (what runs, with which settings), :mod:`.producer` (the synthetic
producer), :mod:`.observer` (output topics and /metrics), :mod:`.claims` (the summary's
checks, pure), :mod:`.report` (the HTML report), :mod:`.view` (the live terminal view),
:mod:`.orchestrator` (processes, shutdown) and :mod:`.cli`.
"""
