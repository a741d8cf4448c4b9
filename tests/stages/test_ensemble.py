"""The ensemble stage's member predictions run where runtime.device says (the request is in the Ray task options),
and the reporting half's predictions it keeps are read back in their protocol."""

from mtl.labels import ABAW3
from mtl.stages.ensemble import member_task_options


def test_member_predictions_request_a_gpu_only_on_cuda():
    assert member_task_options("cpu") == {"num_cpus": 1, "num_gpus": 0, "max_calls": 0}
    assert member_task_options("cuda") == {"num_cpus": 1, "num_gpus": 1, "max_calls": 0}  # the GPU worker is reused


def test_the_reporting_half_predictions_are_read_back_in_their_protocol(tmp_path):
    import json

    import numpy as np

    from mtl.eval.predictions import FIELDS
    from mtl.stages.ensemble import RECORD, read_report_preds, save_preds
    from tests.eval.test_predictions import made

    preds = made(protocol=ABAW3)
    location = save_preds(preds, str(tmp_path / "report_preds.npz"))
    back = read_report_preds(location)
    assert back.protocol is ABAW3 and back.keys.tolist() == preds.keys.tolist()
    assert all(np.array_equal(getattr(back, name), getattr(preds, name)) for name in FIELDS)
    np.savez(tmp_path / "old.npz", **preds.arrays())  # written before the file held its protocol
    (tmp_path / RECORD).write_text(json.dumps({"protocol": "abaw3"}))
    assert read_report_preds(str(tmp_path / "old.npz")).protocol is ABAW3
    assert read_report_preds("") is None and read_report_preds(str(tmp_path / "none.npz")) is None
