"""Box-overlap tracking: ids kept while boxes overlap, new ids for new faces and after a long gap."""

from mtl.serve.track import Tracker


def test_ids_follow_overlapping_boxes():
    tracker = Tracker(max_gap=2)
    assert tracker.update(1, [(0, 0, 10, 10), (50, 50, 10, 10)]) == [1, 2]
    assert tracker.update(2, [(52, 51, 10, 10), (1, 0, 10, 10)]) == [2, 1]  # order of detections does not matter
    assert tracker.update(3, []) == []
    assert tracker.update(4, [(2, 1, 10, 10), (100, 0, 10, 10)]) == [1, 3]  # 1 back within the gap; 3 is new
    assert tracker.update(8, [(2, 1, 10, 10)]) == [4]  # unseen for 4 frames: a new track
    assert tracker.count == 4
