"""Public metric API (a stable import path whatever the package layout): the ABAW metrics of `mtl.eval.metrics`."""

from mtl.eval.metrics import au_metric, ccc, expr_metric, va_metric

__all__ = ["au_metric", "ccc", "expr_metric", "va_metric"]
