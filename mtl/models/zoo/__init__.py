"""Registered non-timm backbones: each module adds one to `mtl.models.backbones.BACKBONES`."""
