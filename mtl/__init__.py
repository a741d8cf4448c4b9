"""mtl: multitask emotion recognition (AU, EXPR, VA) from incompletely labelled data, on Ray."""

import os as _os

# Nothing downloads at run time: timm/huggingface must not reach a hub, wandb logs offline unless told otherwise.
# These must be set before timm or wandb are imported anywhere in the process.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("WANDB_MODE", "offline")
# Ray Train's print patch shows every worker print twice in the driver's log; our workers print one line an epoch.
_os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

__version__ = "0.1.0"
