"""tools/bench.py's photo views (shared by bench.py and bench_debug.py): each view is the crop it
names, mirrored second; bench_debug's held-out photos are distinct from the calibration ones."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench  # noqa: E402
import bench_debug as bd  # noqa: E402


def test_views_are_the_named_crops_and_their_mirrors():
    h, w = 20, 30
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = np.arange(h)[:, None] / h  # row index in red, column index in green
    img[..., 1] = np.arange(w)[None, :] / w
    views = bench.photo_views(img, ((1.0, "center"), (0.5, "bottom-right"), (0.5, "top-right")),
                              size=10)
    assert len(views) == 6 and all(v.shape == (10, 10, 3) for v in views)
    centre, mirrored = views[0], views[1]
    np.testing.assert_allclose(mirrored, centre[:, ::-1], atol=1e-6)
    cols = lambda v: (v[..., 1].min() * w, v[..., 1].max() * w)  # noqa: E731
    rows = lambda v: (v[..., 0].min() * h, v[..., 0].max() * h)  # noqa: E731
    assert 4.5 <= cols(centre)[0] <= 6 and 23 <= cols(centre)[1] <= 24.5  # columns 5..24
    assert rows(views[2])[0] >= 9.5 and cols(views[2])[0] >= 19.5  # bottom-right 10x10
    assert rows(views[4])[1] <= 9.5 and cols(views[4])[0] >= 19.5  # top-right 10x10
    x = bench.imagenet_normalize(views)
    assert x.shape == (6, 3, 10, 10) and x.dtype == np.float32 and x.flags.c_contiguous


def test_debug_bench_judges_photos_it_never_calibrates_on():
    calib_photos = {"astronaut", "chelsea", "coffee"}  # real_photos()[:16]: 6 + 6 + 4 views
    names = {n for _, n in bd.UNSEEN_PHOTOS}
    assert not names & calib_photos and "cat" not in names  # skimage's cat is chelsea
    assert len(bd.UNSEEN_VIEWS) == 11 and len(set(bd.UNSEEN_VIEWS)) == 11
