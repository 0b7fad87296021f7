"""PromQL helpers for the dashboard and rule tests, on promql-parser (the Rust parser's Python
binding): Grafana's variables replaced by values, the metric names an expression reads, and the
parts of an alert or annotation expression that must return data when nothing is wrong (an alert's
condition is empty while it does not fire; what it compares is not)."""

from __future__ import annotations

import re

import promql_parser as pp

GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "5m",
    '=~"$model"': '=~".+"',
}
COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}


def substitute(expr: str) -> str:
    """A dashboard query as Grafana would send it (every model, a one-minute rate interval)."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable is left in {expr!r}"
    return expr


def parse(expr: str) -> pp.Expr:
    return pp.parse(substitute(expr))


def metrics(expr: str) -> set[str]:
    """The metric names an expression reads."""
    names: set[str] = set()

    def visit(node: pp.Expr) -> None:
        if isinstance(node, pp.VectorSelector) and node.name:
            names.add(node.name)

    pp.walk(parse(expr), visit)
    return names


def signals(expr: str) -> list[list[str]]:
    """What must return data for `expr` to be able to fire, as groups of which at least one member
    must: the left side of each comparison (without `bool`), both sides of `and` and `unless`, and
    either side of `or` (`a or on (instance) b` is an alternative: GPU metrics, else the CPU's)."""

    def split(node: pp.Expr) -> list[list[pp.Expr]]:
        if isinstance(node, pp.ParenExpr):
            return split(node.expr)
        if isinstance(node, pp.BinaryExpr):
            op = str(node.op)
            if op in ("and", "unless"):
                return split(node.lhs) + split(node.rhs)
            if op == "or":
                return [a + b for a in split(node.lhs) for b in split(node.rhs)]
            if op in COMPARISONS and not (node.modifier is not None and node.modifier.return_bool):
                return split(node.lhs)
        return [[node]]

    whole = parse(expr)
    groups = split(whole)
    if groups == [[whole]]:  # nothing to split: the expression as written, not as the parser prints it
        return [[substitute(expr)]]
    return [[re.sub(r"\s+", " ", str(n)).strip() for n in group] for group in groups]
