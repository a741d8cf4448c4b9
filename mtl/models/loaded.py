"""Predictors loaded from exported model files (`mtl.serve.export`): a torch.export program (`.pt2`) or an ONNX
file run by onnxruntime, each an `nn.Module` called on normalised crops [B, 3, S, S] -> (au_prob [B, A], expr_prob
[B, E], va [B, 2]) and carrying what `mtl predict` reads from the file's metadata (`au_thresholds`, `image_size`,
`stored_size`, `crop_scale`, `mean_rgb`, `protocol`). The ensembles they were exported from are
`mtl.models.ensembles`.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from mtl.errors import DataError
from mtl.extras import require
from mtl.labels import get_protocol
from mtl.models.ensembles import Outputs

METADATA_KEY = "mtl"  # ONNX metadata_props key; the .pt2 extra file is METADATA_KEY + ".json"


class Described(nn.Module):
    """The attributes `mtl predict` reads, from an export's metadata."""

    def __init__(self, meta: dict):
        super().__init__()
        self.metadata = meta
        self.register_buffer("au_thresholds", torch.tensor(meta["au_thresholds"], dtype=torch.float32))
        self.image_size = int(meta["image_size"])
        self.stored_size = int(meta["stored_size"])
        self.crop_scale = float(meta["crop_scale"])
        self.mean_rgb = [float(v) for v in meta["mean_rgb"]]
        self.protocol = get_protocol(meta.get("protocol"))


class ExportedPredictor(Described):
    """A loaded `.pt2` program (a GraphModule) with its metadata."""

    def __init__(self, program: nn.Module, meta: dict):
        super().__init__(meta)
        self.program = program

    def train(self, mode: bool = True) -> ExportedPredictor:
        """An exported program is always in eval mode (its module refuses `train()`)."""
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Outputs:
        return tuple(self.program(x))


class OnnxPredictor(Described):
    """An ONNX file run by onnxruntime (CUDA provider on a cuda `device` when onnxruntime has it), taking and
    returning torch tensors on the input's device."""

    def __init__(self, data: bytes, name: str, device: torch.device):
        onnxruntime = require("onnxruntime", f"{name}: an ONNX model; running it")
        wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
        providers = [p for p in wanted if p in onnxruntime.get_available_providers()] + ["CPUExecutionProvider"]
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            session = onnxruntime.InferenceSession(data, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for unparsable files
            raise DataError(f"{name}: an ONNX model onnxruntime cannot load ({str(err).splitlines()[0][:200]})") \
                from None
        meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            raise DataError(f"{name}: an ONNX model without mtl's metadata (not written by `mtl export`)")
        super().__init__(json.loads(meta))
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Outputs:
        outputs = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})
        return tuple(torch.from_numpy(output).to(x.device) for output in outputs)
