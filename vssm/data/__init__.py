"""Image datasets that timm lacks: a real dataset shipped inside an installed package (scikit-learn's handwritten
digits, for the quick start), a synthetic one for smoke tests and benchmarks, and an image folder that names the file
of a corrupt image instead of skipping it. Medical data in nnU-Net v2's raw format (reading, validation, geometry) is in
``vssm.data.nnunet_raw`` and its preprocessing (normalisation by channel name, resampling, fingerprint) in
``vssm.data.medical_transforms``; video datasets (decord; the K400 / SSv2 / HMDB-51 / list annotation formats, the
evaluation protocols' samplers and views, decoding in worker processes with a time limit) in ``vssm.data.video``,
``vssm.data.video_annotations`` and ``vssm.data.video_errors``, and the generated moving-shapes videos of the video
quick start in ``vssm.data.moving_shapes``; import them from there."""
from .digits import DigitsDataset
from .errors import DataError
from .folder import StrictImageFolder
from .synthetic import SyntheticDataset

__all__ = ["DataError", "DigitsDataset", "StrictImageFolder", "SyntheticDataset"]
