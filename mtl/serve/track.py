"""Face tracks across the frames of one video by box overlap.

Each frame's detections are matched one to one to the live tracks (greedy, highest IoU first, IoU >=
`least_iou`); an unmatched detection starts a new track (ids 1, 2, ... in order of appearance) and a track unseen
for more than `max_gap` frames ends, so a face that leaves and comes back later gets a new id."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtl.serve.detect import Box, match


@dataclass
class Track:
    id: int
    box: Box
    last_frame: int


@dataclass
class Tracker:
    least_iou: float = 0.3
    max_gap: int = 5
    tracks: list[Track] = field(default_factory=list)
    count: int = 0  # tracks started

    def update(self, frame: int, boxes: list[Box]) -> list[int]:
        """The track id of each box of `frame` (frames must come in increasing order)."""
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_gap]
        ids = [0] * len(boxes)
        for i, j in match([t.box for t in self.tracks], boxes, self.least_iou):
            track = self.tracks[i]
            track.box, track.last_frame = boxes[j], frame
            ids[j] = track.id
        for j, box in enumerate(boxes):
            if not ids[j]:
                self.count += 1
                self.tracks.append(Track(self.count, box, frame))
                ids[j] = self.count
        return ids
