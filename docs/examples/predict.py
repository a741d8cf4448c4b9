"""AUs, expression and valence-arousal for a folder of face crops, from Python.

    python docs/examples/predict.py MODEL FACES

MODEL: a training's best.pt, an exported .pt2 or .onnx, or a CNN-RNN file (ensemble_temporal.pt);
FACES: a folder of face images (one video's frames, read in `mtl predict --images` order).
"""

import sys
from pathlib import Path

import mtl

model_path, faces = sys.argv[1], sys.argv[2]
predictor = mtl.load(model_path)  # device="auto": cuda when there is a GPU
result = predictor.predict(faces)  # or: image paths, a uint8 array [N, H, W, 3], PIL images, a uint8 tensor
print(f"{len(result)} faces, protocol {result.protocol}")
for row in result.to_rows():
    active = " ".join(name for name in result.au_names if row[name]) or "-"
    print(f"{Path(row['input']).name}: {row['expression']}, valence {row['valence']:+.3f}, "
          f"arousal {row['arousal']:+.3f}, AUs {active}")
