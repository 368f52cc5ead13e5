"""Readers of the video annotation formats users have, each returning ``VideoList`` (records of full path + class id).

- ``read_path_label_list``: ``path label`` lines, separated by ``,`` or white space (VideoMamba's and UniFormerV2's
  ``train.csv`` / ``val.csv``: no header, column 0 a path relative to the video root, column 1 an int label).
- ``read_kinetics_csv``: the raw Kinetics csv (``label,youtube_id,time_start,time_end,split[,is_cc]``); files are
  named ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4`` (the ActivityNet crawler's rule), flat in the root or
  in per-class folders; class ids follow the ALPHABETICAL class order (mmaction2's ``label_map_k400.txt``).
- ``read_ssv2``: Something-Something-v2's ``something-something-v2-labels.json`` (template -> id, 174 classes) and an
  annotation json (``id``, ``template``; the id of a video is its template with ``[`` ``]`` removed), files
  ``<root>/<id>.webm``.
- ``read_hmdb51_splits``: HMDB-51's ``testTrainMulti_7030_splits`` (``<class>_test_split<k>.txt``: ``<video>.avi
  <0|1|2>``, 1 = train, 2 = test), files ``<root>/<class>/<video>.avi``; class ids in alphabetical class order.
"""
import csv
import json
import os
import re
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

from .video_errors import AnnotationError, EmptyAnnotationError, UnknownLabelError


class VideoRecord(NamedTuple):
    """One annotated video: its full path and class id."""
    path: str
    label: int


@dataclass
class VideoList:
    """The videos of one split.

    Attributes:
        records: The videos in file order.
        classes: Class names in id order where the format names them, else None.
        source: The annotation file(s), for messages.
    """
    records: list[VideoRecord]
    classes: Optional[list[str]] = None
    source: str = ""

    @property
    def num_classes(self) -> int:
        """len(classes) where known, else 1 + the largest label."""
        if self.classes is not None:
            return len(self.classes)
        return 1 + max(record.label for record in self.records)


def _join(root: Optional[str], path: str) -> str:
    return os.path.normpath(os.path.join(root, path)) if root else os.path.normpath(path)


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise AnnotationError(f"{what} not found: {path}")


def _nonempty(videos: VideoList) -> VideoList:
    if not videos.records:
        raise EmptyAnnotationError(f"annotation {videos.source} lists no video")
    return videos


def read_class_names(path: str) -> list[str]:
    """One class name per line (id = line number, blank lines ignored), e.g. mmaction2's ``label_map_k400.txt``."""
    _require_file(path, "class list")
    with open(path) as file:
        names = [line.strip() for line in file if line.strip()]
    if len(set(names)) != len(names):
        raise AnnotationError(f"class list {path} names a class twice")
    return names


def read_path_label_list(path: str, root: Optional[str] = None, delimiter: Optional[str] = None,
                         num_classes: Optional[int] = None) -> VideoList:
    """``path label`` lines (VideoMamba / UniFormerV2 csv: no header).

    Args:
        path: The list file.
        root: Folder the listed paths are relative to (VideoMamba's ``--prefix``); None: as written.
        delimiter: ``','`` or ``' '``; None: ``','`` on lines that hold one, else white space. The label is the last
            field, so a path may hold the other separator.
        num_classes: Labels must be below it (an unknown label is an error naming the line).
    """
    _require_file(path, "annotation list")
    records = []
    with open(path) as file:
        for number, line in enumerate(file, 1):
            line = line.strip()
            if not line:
                continue
            sep = delimiter if delimiter not in (None, " ") else ("," if delimiter is None and "," in line else None)
            parts = line.rsplit(sep, 1)
            if len(parts) != 2 or not parts[0].strip():
                raise AnnotationError(f"{path}:{number}: expected 'path label', got {line!r}")
            video, label = parts[0].strip(), parts[1].strip()
            if not re.fullmatch(r"-?\d+", label):
                raise AnnotationError(f"{path}:{number}: label {label!r} is not an integer")
            label = int(label)
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise UnknownLabelError(f"{path}:{number}: label {label} outside 0..{(num_classes or 1) - 1}"
                                        if num_classes else f"{path}:{number}: negative label {label}")
            records.append(VideoRecord(_join(root, video), label))
    return _nonempty(VideoList(records, None, path))


def kinetics_file_name(youtube_id: str, time_start: float, time_end: float, ext: str = ".mp4") -> str:
    """``<youtube_id>_<start:06d>_<end:06d>.mp4``, the name the Kinetics crawler gives a trimmed clip."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}{ext}"


def read_kinetics_csv(path: str, root: Optional[str] = None, classes: Optional[Sequence[str]] = None,
                      split: Optional[str] = None, layout: str = "auto", ext: str = ".mp4") -> VideoList:
    """The raw Kinetics csv (K400/K600/K700: header ``label,youtube_id,time_start,time_end,split``).

    Args:
        path: The csv file.
        root: The video folder.
        classes: Class names in id order (``read_class_names``); None: the csv's class names sorted alphabetically
            (equal to mmaction2's K400 label map when the csv holds all 400 classes).
        split: Keep only rows of this ``split`` column value; None: all rows.
        layout: ``'flat'`` (``root/<file>``), ``'by_class'`` (``root/<label>/<file>``, spaces in the label as written
            or replaced by ``_``) or ``'auto'`` (the first of these that exists, else flat).
        ext: File extension.
    """
    if layout not in ("auto", "flat", "by_class"):
        raise AnnotationError(f"kinetics layout must be 'auto', 'flat' or 'by_class', got {layout!r}")
    _require_file(path, "Kinetics csv")
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    missing = {"label", "youtube_id", "time_start", "time_end"} - set(rows[0] if rows else ())
    if rows and missing:
        raise AnnotationError(f"{path}: not a Kinetics csv (no column(s) {', '.join(sorted(missing))})")
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    names = list(classes) if classes is not None else sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(names)}
    records = []
    for number, row in enumerate(rows, 2):
        label = row["label"]
        if label not in index:
            raise UnknownLabelError(f"{path}:{number}: class {label!r} is not in the class list ({len(names)} "
                                    "classes)")
        name = kinetics_file_name(row["youtube_id"], row["time_start"], row["time_end"], ext)
        candidates = []
        if layout in ("flat", "auto"):
            candidates.append(name)
        if layout in ("by_class", "auto"):
            candidates += [os.path.join(label, name), os.path.join(label.replace(" ", "_"), name)]
        full = [_join(root, c) for c in candidates]
        chosen = next((f for f in full if os.path.exists(f)), full[0])
        records.append(VideoRecord(chosen, index[label]))
    return _nonempty(VideoList(records, names, path))


def ssv2_class_id(template: str) -> str:
    """An SSv2 template as the labels file spells it: the placeholders' brackets removed."""
    return template.replace("[", "").replace("]", "")


def read_ssv2(annotation: str, labels: str, root: Optional[str] = None, ext: str = ".webm") -> VideoList:
    """Something-Something-v2: ``labels`` (``something-something-v2-labels.json``, template -> id) and an annotation
    json (``something-something-v2-{train,validation}.json``: a list of ``{"id", "template", ...}``)."""
    _require_file(labels, "SSv2 labels file")
    _require_file(annotation, "SSv2 annotation file")
    try:
        with open(labels) as file:
            table = {name: int(i) for name, i in json.load(file).items()}
        with open(annotation) as file:
            entries = json.load(file)
    except (ValueError, AttributeError) as error:
        raise AnnotationError(f"SSv2 files {labels} / {annotation} are not the expected json: {error}") from None
    names = [None] * len(table)
    for name, i in table.items():
        if not 0 <= i < len(table) or names[i] is not None:
            raise AnnotationError(f"{labels}: ids are not 0..{len(table) - 1}, each once")
        names[i] = name
    records = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise AnnotationError(f"{annotation}: entry {number} has no 'id'")
        if "template" not in entry:
            raise UnknownLabelError(f"{annotation}: video {entry['id']} has no 'template' (a test file without "
                                    "labels?)")
        name = ssv2_class_id(entry["template"])
        if name not in table:
            raise UnknownLabelError(f"{annotation}: video {entry['id']}: template {name!r} is not in {labels}")
        records.append(VideoRecord(_join(root, f"{entry['id']}{ext}"), table[name]))
    return _nonempty(VideoList(records, names, annotation))


def read_hmdb51_splits(split_dir: str, root: Optional[str] = None, split_id: int = 1,
                       subset: str = "test") -> VideoList:
    """HMDB-51's official 70/30 splits: ``<split_dir>/<class>_test_split<split_id>.txt``; ``subset`` 'train' (1) or
    'test' (2); S4ND evaluates split 1's test videos."""
    codes = {"train": "1", "test": "2"}
    if subset not in codes:
        raise AnnotationError(f"HMDB-51 subset must be 'train' or 'test', got {subset!r}")
    if not os.path.isdir(split_dir):
        raise AnnotationError(f"HMDB-51 split folder not found: {split_dir}")
    suffix = f"_test_split{split_id}.txt"
    files = sorted(f for f in os.listdir(split_dir) if f.endswith(suffix))
    if not files:
        raise EmptyAnnotationError(f"{split_dir} holds no *{suffix} file")
    classes = [f[:-len(suffix)] for f in files]
    records = []
    for label, (name, split_file) in enumerate(zip(classes, files)):
        with open(os.path.join(split_dir, split_file)) as file:
            for number, line in enumerate(file, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise AnnotationError(f"{split_file}:{number}: expected '<video> <0|1|2>', got {line.strip()!r}")
                if parts[1] == codes[subset]:
                    records.append(VideoRecord(_join(root, os.path.join(name, parts[0])), label))
    return _nonempty(VideoList(records, classes, split_dir))
