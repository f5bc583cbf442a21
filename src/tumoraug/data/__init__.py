"""Data: BraTS discovery, ROI extraction, the ROI cache and procedural phantoms.

The pipeline is ``BraTS folder -> discover_subjects -> extract_roi -> preprocess (cache) ->
ROIDataset``; `write_phantom_dataset` writes BraTS-layout test data without real scans.
"""

from tumoraug.data.brats import (
    MODALITIES,
    LayoutWarning,
    SubjectRecord,
    check_modalities,
    discover_subjects,
    load_subject,
    load_volume,
)
from tumoraug.data.cache import PreprocessReport, ROIDataset, preprocess, read_manifest
from tumoraug.data.items import make_roi_subject, subject_tensors
from tumoraug.data.phantom import make_phantom, write_phantom_dataset
from tumoraug.data.roi import ROI, ROIWarning, extract_roi, normalize

__all__ = [
    "MODALITIES",
    "ROI",
    "LayoutWarning",
    "PreprocessReport",
    "ROIDataset",
    "ROIWarning",
    "SubjectRecord",
    "check_modalities",
    "discover_subjects",
    "extract_roi",
    "load_subject",
    "load_volume",
    "make_phantom",
    "make_roi_subject",
    "normalize",
    "preprocess",
    "read_manifest",
    "subject_tensors",
    "write_phantom_dataset",
]
