"""Public metric API (a stable import path whatever the package layout), from `mtl.eval.metrics`.

- ABAW 2020 (`data.protocol: abaw2020`): `au_metric` (0.5 F1 + 0.5 accuracy over 8 AUs), `expr_metric` (0.67 macro
  F1 + 0.33 accuracy over 7 classes), `va_metric` (mean CCC) and `ccc`.
- ABAW3+ (`data.protocol: abaw3`): `abaw3_mtl_metric`, the multi-task challenge's P_MTL; the per-task challenges'
  metrics are its terms: AU mean F1 = `masked_au_f1` (12 AUs, each on its labelled rows), EXPR macro F1 =
  `macro_f1` (8 classes, Other included), VA mean CCC = `mean_ccc`.
- `protocol_scores`: the three tasks scored by a protocol's metric (`PROTOCOL_METRICS`, keyed by
  `mtl.labels.Protocol.metric`), what selection and the report use.
"""

from mtl.eval.metrics import (PROTOCOL_METRICS, abaw3_mtl_metric, au_metric, ccc, expr_metric, macro_f1, masked_au_f1,
                              mean_ccc, protocol_scores, va_metric)

__all__ = ["PROTOCOL_METRICS", "abaw3_mtl_metric", "au_metric", "ccc", "expr_metric", "macro_f1", "masked_au_f1",
           "mean_ccc", "protocol_scores", "va_metric"]
