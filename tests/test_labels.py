"""The shared VA binning rule: one bin per label for balancing and for the loss, whatever the float width."""

import numpy as np
import torch

from mtl.data.index import va_cell
from mtl.labels import va_bin
from mtl.objectives.losses import va_bins


def expected_bin(k: int) -> int:
    """k/10 lies on the left edge of bin k + 10 (bins [−1 + 0.1·i, −1 + 0.1·(i + 1))); 1.0 belongs to bin 19."""
    return min(k + 10, 19)


def test_every_tenth_gets_the_same_bin_in_float32_float64_numpy_torch_and_the_balancer():
    ks = list(range(-10, 11))
    want = [expected_bin(k) for k in ks]
    as_float = [k / 10 for k in ks]
    assert [va_bin(v) for v in as_float] == want
    assert [va_cell(v, v)[0] for v in as_float] == want
    for dtype in (np.float32, np.float64):
        assert va_bin(np.array(as_float, dtype=dtype)).astype(int).tolist() == want
    for dtype in (torch.float32, torch.float64):
        assert va_bins(torch.tensor(as_float, dtype=dtype)).tolist() == want


def test_values_inside_a_bin_and_out_of_range():
    assert va_bin(-0.95) == 0 and va_bin(0.05) == 10 and va_bin(0.9999) == 19
    assert va_bin(-1.7) == 0 and va_bin(3.0) == 19
    # rounding to 1e-6 only moves values within 5e-7 of an edge
    assert va_bin(0.1 - 1e-7) == 11 and va_bin(0.1 - 1e-5) == 10
