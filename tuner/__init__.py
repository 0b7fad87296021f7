"""slatune tuner: keeps every SLA while packing bulk work onto the devices.

Built so far are its pure parts: the search space from the spec's bounds (`space`), the guardrails
every proposal passes through (`guardrails`), and SLA scoring (`objective`). The Optuna
ask/tell loop that applies candidates live and scores them from the store's windows comes next.
"""
