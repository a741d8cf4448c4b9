"""Reading photos (modes, EXIF) and videos (streamed, pts times, truncated and unreadable files) for --media."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mtl.data.images import MAX_PIXELS
from mtl.serve.media import MediaReport, expected_frames, find_media, read_media
from tests.data.test_prepare import huge_png
from tests.serve.media_fixtures import FacePlacement, clip_frames, save_photo, truncate, write_video


def read(path, kind):
    report = MediaReport(path, kind)
    return list(read_media(path, report)), report


def test_photo_modes_become_rgb(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    for mode in ("RGB", "L", "RGBA", "P"):
        frames, report = read(save_photo(tmp_path / f"p_{mode}.png", pixels, mode), "photo")
        assert report.status == "ok" and len(frames) == 1
        assert frames[0].rgb.shape == (30, 50, 3) and frames[0].rgb.dtype == np.uint8
    rgba = read(tmp_path / "p_RGBA.png", "photo")[0][0].rgb
    assert (rgba[:3] >= pixels[:3]).all()  # the translucent strip is composited on white
    sixteen = tmp_path / "deep.png"
    Image.fromarray((np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)).save(sixteen)
    assert read(sixteen, "photo")[0][0].rgb.max() == 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif)
    assert read(tmp_path / "turned.jpg", "photo")[0][0].rgb.shape == (50, 30, 3)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    frames, report = read(tmp_path / "bad.jpg", "photo")
    assert frames == [] and report.status == "unreadable"


def test_a_photo_of_too_many_pixels_is_refused_from_its_header(tmp_path):
    """A 600 KB PNG of 12000 x 12000 pixels (1.5 GB as RGB): unreadable, naming its size and the limit."""
    frames, report = read(huge_png(tmp_path / "huge.png"), "photo")
    assert frames == [] and report.status == "unreadable"
    limit = f"{MAX_PIXELS / 1e6:g} megapixels"
    assert report.problem == f"12000 x 12000 pixels, more than the limit of {limit} (MAX_PIXELS)"


def test_video_is_streamed_with_times_and_truncation_is_reported(tmp_path):
    frames = [f for f, _ in clip_frames(64, [FacePlacement(30, 30, 10)], 12)]
    video = write_video(tmp_path / "clip.mkv", frames, fps=10)
    assert expected_frames(video) == 12
    decoded, report = read(video, "video")
    assert report.status == "ok" and report.frames == 12 and [f.index for f in decoded] == list(range(1, 13))
    np.testing.assert_allclose([f.time_s for f in decoded], np.arange(12) / 10, atol=1e-6)
    assert np.abs(decoded[3].rgb.astype(int) - frames[3]).mean() < 12  # lossy, but the same picture

    cut = tmp_path / "cut.mkv"
    cut.write_bytes(video.read_bytes())
    truncate(cut, 0.7)
    decoded, report = read(cut, "video")
    assert report.status == "truncated" and 0 < report.frames < 12 and len(decoded) == report.frames
    mp4 = truncate(write_video(tmp_path / "clip.mp4", frames), 0.5)  # moov atom at the end: gone
    decoded, report = read(mp4, "video")
    assert decoded == [] and report.status == "unreadable"


def test_find_media_expands_folders(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    for name in ("b10.png", "b2.jpg", "notes.txt"):
        (save_photo(tmp_path / "f" / name, pixels) if name != "notes.txt" else (tmp_path / "f" / name).write_text("x"))
    assert [p.name for p in find_media([tmp_path / "f"])] == ["b2.jpg", "b10.png"]
