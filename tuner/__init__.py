"""slatune tuner: keeps every SLA while packing bulk work onto the devices.

Pure parts: the search space from the spec's bounds (`space`), the guardrails every proposal passes
through (`guardrails`), SLA scoring (`objective`). The ask/tell loop (`loop`) drives a `Plant`;
`live.LivePlant` is the running fleet as the loop sees it, and `live.run_study` records a run.
"""
