"""Public metric API (a stable import path whatever the package layout), from `mtl.eval.metrics`: ABAW 2020's
`au_metric`, `expr_metric`, `va_metric` and `ccc`; the ABAW3+ challenges' `abaw3_mtl_metric` (P_MTL) and, per
task, `masked_au_f1`, `macro_f1` and `mean_ccc`."""

from mtl.eval.metrics import (abaw3_mtl_metric, au_metric, ccc, expr_metric, macro_f1, masked_au_f1, mean_ccc,
                              va_metric)

__all__ = ["abaw3_mtl_metric", "au_metric", "ccc", "expr_metric", "macro_f1", "masked_au_f1", "mean_ccc",
           "va_metric"]
