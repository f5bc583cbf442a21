"""ROI extraction: centring on the tumor bbox, padding at borders, normalisation, warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tumoraug.data.roi import ROIWarning, crop_or_pad, extract_roi, normalize, tumor_bbox
from tumoraug.errors import DataError


def head(shape=(40, 36, 30)):
    """A volume whose brain (non-zero) is a box with a smooth ramp, background 0."""
    volume = np.zeros(shape, np.float32)
    volume[2:-2, 2:-2, 2:-2] = np.linspace(10, 500, np.prod(shape)).reshape(shape)[2:-2, 2:-2, 2:-2]
    return volume


def tumor(shape, lower, upper, label=1):
    seg = np.zeros(shape, np.uint8)
    seg[tuple(slice(lo, hi + 1) for lo, hi in zip(lower, upper, strict=True))] = label
    return seg


def bbox_in_roi(roi):
    lower, upper = tumor_bbox(roi.seg)
    return lower, upper


def test_roi_is_centred_on_the_tumor_bbox():
    volume = head()
    seg = tumor(volume.shape, (10, 12, 8), (15, 17, 13))  # extent 6 on every axis
    roi = extract_roi([volume], seg, size=16)
    assert roi.image.shape == (1, 16, 16, 16) and roi.image.dtype == np.float32
    assert roi.seg.shape == (16, 16, 16) and roi.seg.dtype == np.uint8
    lower, upper = bbox_in_roi(roi)
    np.testing.assert_array_equal(lower, [5, 5, 5])  # 5 voxels before and after
    np.testing.assert_array_equal(upper, [10, 10, 10])
    assert roi.start == (5, 7, 3)
    assert roi.tumor_extent == (6, 6, 6)
    assert roi.seg.sum() == seg.sum()


def test_odd_margin_puts_the_extra_voxel_before_the_tumor():
    volume = head()
    seg = tumor(volume.shape, (10, 10, 10), (14, 14, 14))  # extent 5, size 16: margin 11
    lower, upper = bbox_in_roi(extract_roi([volume], seg, size=16))
    np.testing.assert_array_equal(lower, [6, 6, 6])  # 6 voxels before
    np.testing.assert_array_equal(16 - 1 - upper, [5, 5, 5])  # 5 after


def test_roi_pads_where_the_tumor_touches_the_border():
    volume = head()
    seg = tumor(volume.shape, (0, 0, 26), (3, 3, 29))  # corner tumor touching 3 faces
    volume[seg > 0] = 700.0
    roi = extract_roi([volume], seg, size=16)
    assert roi.start == (-6, -6, 20)
    assert roi.seg.sum() == seg.sum()  # the whole tumor is kept
    lower, upper = bbox_in_roi(roi)
    np.testing.assert_array_equal(lower + upper + 1, [16, 16, 16])  # still centred
    # padding: background -1 in the image, 0 in the seg
    assert (roi.image[0, :6] == -1).all() and (roi.image[0, :, :6] == -1).all()
    assert (roi.image[0, :, :, 10:] == -1).all()
    assert (roi.seg[:6] == 0).all()
    assert (roi.image[0][roi.seg > 0] == 1.0).all()  # the bright tumor is at the top


def test_roi_completely_inside_keeps_source_values():
    volume = head()
    seg = tumor(volume.shape, (18, 16, 13), (21, 19, 16))
    roi = extract_roi([volume], seg, size=8)
    x0, y0, z0 = roi.start
    np.testing.assert_array_equal(
        roi.image[0], normalize(volume)[x0 : x0 + 8, y0 : y0 + 8, z0 : z0 + 8]
    )


def test_normalisation_range_background_and_percentiles():
    rng = np.random.default_rng(0)
    volume = np.zeros((30, 30, 30), np.float32)
    volume[5:25, 5:25, 5:25] = rng.uniform(100, 1100, (20, 20, 20))
    volume[10, 10, 10] = 1e6  # an outlier is clipped, not used as the maximum
    out = normalize(volume)
    assert out.dtype == np.float32
    assert out.min() == -1.0 and out.max() == 1.0
    assert (out[volume == 0] == -1.0).all()  # background exactly -1
    brain = out[volume != 0]
    lo, hi = np.percentile(volume[volume != 0], (0.5, 99.5))
    assert np.isclose((brain == 1.0).mean(), 0.005, atol=0.001)  # top 0.5 % clipped
    assert np.isclose((brain == -1.0).mean(), 0.005, atol=0.001)
    mid = volume[15, 15, 15]
    assert np.isclose(out[15, 15, 15], 2 * (mid - lo) / (hi - lo) - 1, atol=1e-5)


def test_brain_percentiles_use_the_whole_volume_not_the_cube():
    volume = head()
    seg = tumor(volume.shape, (18, 16, 13), (21, 19, 16))
    small = extract_roi([volume], seg, size=4).image[0]
    np.testing.assert_allclose(small, normalize(volume)[18:22, 16:20, 13:17], atol=1e-6)


def test_several_channels_are_stacked():
    volume = head()
    seg = tumor(volume.shape, (10, 10, 10), (13, 13, 13))
    roi = extract_roi([volume, volume[::-1].copy()], seg, size=12)
    assert roi.image.shape == (2, 12, 12, 12)
    assert not np.array_equal(roi.image[0], roi.image[1])


def test_tumor_larger_than_the_cube_warns():
    volume = head()
    seg = tumor(volume.shape, (4, 10, 10), (30, 13, 13))
    with pytest.warns(ROIWarning, match=r"tumor bounding box \(27, 4, 4\) is larger than the 16³"):
        roi = extract_roi([volume], seg, size=16, seg_name="s_seg.nii.gz")
    assert roi.image.shape == (1, 16, 16, 16)


def test_tumor_that_fits_does_not_warn():
    volume = head()
    seg = tumor(volume.shape, (4, 10, 10), (19, 13, 13))  # extent 16 == size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_roi([volume], seg, size=16)


def test_empty_tumor_mask_is_an_error():
    volume = head()
    with pytest.raises(DataError, match=r"s_seg\.nii\.gz: the tumor mask is empty"):
        extract_roi([volume], np.zeros(volume.shape, np.uint8), 16, seg_name="s_seg.nii.gz")


def test_shape_mismatch_is_an_error():
    volume = head()
    seg = tumor((40, 36, 29), (10, 10, 10), (12, 12, 12))
    with pytest.raises(DataError, match=r"s_flair\.nii: shape \(40, 36, 30\) differs"):
        extract_roi([volume], seg, 16, names=["s_flair.nii"])


def test_empty_or_constant_image_is_an_error():
    seg = tumor((10, 10, 10), (4, 4, 4), (5, 5, 5))
    with pytest.raises(DataError, match="the image is empty"):
        extract_roi([np.zeros((10, 10, 10), np.float32)], seg, 8)
    with pytest.raises(DataError, match="constant intensity"):
        extract_roi([np.full((10, 10, 10), 3.0, np.float32)], seg, 8)


def test_crop_or_pad_outside_the_volume_is_all_fill():
    out = crop_or_pad(np.ones((4, 4, 4), np.float32), (10, 0, 0), 3, -1.0)
    assert out.shape == (3, 3, 3) and (out == -1).all()
