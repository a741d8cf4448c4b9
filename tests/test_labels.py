"""The shared VA binning rule: one bin per label for balancing and for the loss, whatever the float width."""

import numpy as np
import pytest
import torch

from mtl.data.index import va_cell
from mtl.labels import va_bin
from mtl.errors import DataError
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


def test_protocols_hold_their_release_label_sets():
    from mtl.labels import ABAW3, ABAW2020, get_protocol

    assert get_protocol(None) is ABAW2020 and get_protocol("abaw3") is ABAW3
    assert (ABAW2020.num_au, ABAW2020.num_expr, ABAW3.num_au, ABAW3.num_expr) == (8, 7, 12, 8)
    assert ABAW3.expr_names[:7] == ABAW2020.expr_names and ABAW3.expr_names[7] == "Other"
    assert set(ABAW2020.au_names) - set(ABAW3.au_names) == {"AU20"}  # ABAW3 dropped AU20, added five
    assert ABAW3.widths == {"au": 12, "expr": 8, "va": 40}
    with pytest.raises(DataError, match="unknown label protocol 'abaw9'"):
        get_protocol("abaw9")


def test_a_partial_protocol_keeps_single_missing_aus_the_2020_one_drops_the_row():
    from mtl.labels import ABAW3, ABAW2020

    some = [1, 0, -1, 0, 0, 0, 0, 0, 0, 0, -1, 1]
    assert ABAW3.check_au(some, "f:2") == tuple(some)
    assert ABAW3.check_au([-1] * 12, "f:2") is None
    assert ABAW2020.check_au([1, 0, -1, 0, 0, 0, 0, 0], "f:2") is None
    assert ABAW3.check_expr(7, "f:2") == 7
    with pytest.raises(DataError, match="f:2: expression 7 is not in 0..6"):
        ABAW2020.check_expr(7, "f:2")
    with pytest.raises(DataError, match="f:3: expected 12 AU values, got 8"):
        ABAW3.check_au([0] * 8, "f:3")
