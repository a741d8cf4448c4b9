"""mtl: multitask emotion recognition (AU, EXPR, VA) from incompletely labelled data, on Ray.

Importing mtl changes nothing in the process: the offline defaults (no hub downloads, wandb offline, no
duplicated worker prints) are set by the CLI (`mtl.cli.main`) and, for library use, by `mtl.jobs.ray_session`
when it starts Ray; `mtl.runtime_defaults()` applies them by hand. `mtl.load(path)`, the Python inference API
(`mtl.api`), imports torch when it is called, not before.
"""

__version__ = "0.1.0"

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # timm/huggingface never reach a hub
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "offline",  # wandb logs locally unless told otherwise
    "WANDB_SILENT": "true",  # wandb's banners and sync hints stay in its run folder (`mtl -v` shows them)
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # Ray Train's print patch shows every worker line twice in the driver log
}


def runtime_defaults() -> None:
    """Set OFFLINE_DEFAULTS in os.environ where the user has not set them (before timm or wandb are imported)."""
    import os

    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def load(path, device: str = "auto"):
    """A model file (best.pt, .pt2, .onnx, a CNN-RNN file) loaded for inference: `mtl.api.load`, which returns a
    `mtl.api.Predictor` (`predict(images)`, `predict_media(paths)`). torch is imported on the first call only."""
    import importlib

    # imported by name at call time: `import mtl` stays free of torch, and the package (a parent of every mtl
    # module) takes no import edge to one of its modules
    return importlib.import_module("mtl.api").load(path, device)
