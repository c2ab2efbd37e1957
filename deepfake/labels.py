"""Labels from files instead of folder names: a competition's CSV, or the challenge's JSON calls.

Most competitions ship ``train.csv`` (a file name and a label per image) beside a flat image folder;
the Synergy'25 challenge ships ``real_cifake_preds.json`` and ``fake_cifake_preds.json``, its organisers'
detector's calls on the images of each class folder (``[{"index": N, "prediction": "real"|"fake"}]`` for
``N.png``), which differ from the folder names on some images. Every file a label names must exist and
every image of the folders in play must be labelled, so a typo never drops or invents training data.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .data import (CLASS_NAMES, IMAGE_EXTENSIONS, DataError, ImageSet, file_number, find_labelled_dirs,
                   list_image_files, load_images)

FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_id", "id", "path", "name")
LABEL_COLUMNS = ("label", "target", "class", "prediction", "is_fake", "fake")
LABEL_VALUES = {"real": 0, "fake": 1, "0": 0, "1": 1}


def read_labels(files: Sequence[str | Path], data_dir: str | Path) -> dict[Path, int]:
    """{image file: 0 real / 1 fake} from every label file, each image labelled once; DataError naming the
    file and the fix for a missing image, an image of the folders without a label, or a bad label."""
    data_dir = Path(data_dir)
    labels: dict[Path, int] = {}
    for file in map(Path, files):
        if not file.is_file():
            raise DataError(f"label file {file} does not exist: pass --labels with a CSV or the challenge's JSON files")
        read = _read_json(file, data_dir) if file.suffix.lower() == ".json" else _read_csv(file, data_dir)
        twice = next((path for path, label in read.items() if labels.get(path, label) != label), None)
        if twice is not None:
            raise DataError(f"{twice} has two different labels, the second in {file}: keep one")
        labels.update(read)
    labelled = {path.resolve() for path in labels}
    unlabelled = next((image for folder in _folders_in_play(labels, data_dir) for image in list_image_files(folder)
                       if image.resolve() not in labelled), None)
    if unlabelled is not None:
        raise DataError(f"{unlabelled} has no label in {', '.join(map(str, files))}: label it there or move it out")
    return labels


def _read_csv(file: Path, data_dir: Path) -> dict[Path, int]:
    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"label file {file} is not a readable CSV ({error}): save it as CSV with a header") from error
    columns = {name.strip().lower(): name for name in table.columns}
    name_column = next((columns[c] for c in FILE_COLUMNS if c in columns), None)
    label_column = next((columns[c] for c in LABEL_COLUMNS if c in columns), None)
    if name_column is None or label_column is None:
        raise DataError(f"label file {file} has columns {', '.join(table.columns)}: it needs a file-name column "
                        f"({', '.join(FILE_COLUMNS)}) and a label column ({', '.join(LABEL_COLUMNS)})")
    labels: dict[Path, int] = {}
    for row, (name, value) in enumerate(zip(table[name_column], table[label_column]), start=2):
        image, label = _image(name, file, data_dir, f"row {row}"), _label(value, file, f"row {row}")
        if labels.setdefault(image, label) != label:
            raise DataError(f"{image} has two different labels in {file} (row {row} is the second): keep one")
    return labels


def _read_json(file: Path, data_dir: Path) -> dict[Path, int]:
    """The challenge's format: the file's name says which class folder it labels, its indices the images."""
    folder_class = next((label for label, name in enumerate(CLASS_NAMES) if file.name.lower().startswith(name)), None)
    if folder_class is None:
        raise DataError(f"label file {file} does not say which folder it labels: name it real_*.json or fake_*.json, "
                        f"as the challenge's real_cifake_preds.json and fake_cifake_preds.json")
    folder = find_labelled_dirs(data_dir)[folder_class]
    by_number = {file_number(image): image for image in list_image_files(folder)}
    try:
        entries = json.loads(file.read_text())
        calls = [(int(entry["index"]), str(entry["prediction"])) for entry in entries]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DataError(f"label file {file} is not a JSON list of {{\"index\": N, \"prediction\": \"real\"|\"fake\"}} "
                        f"({error!r}): fix or replace it") from error
    labels = {}
    for index, call in calls:
        if index not in by_number:
            raise DataError(f"label file {file} labels image {index}, but {folder} has no {index}.png: "
                            f"remove the entry or add the image")
        labels[by_number[index]] = _label(call, file, f"index {index}")
    return labels


def _image(name: str, file: Path, data_dir: Path, where: str) -> Path:
    """The image a CSV row names: a path relative to the data folder (or to the CSV's folder), with or without
    its extension (Kaggle ids often have none)."""
    for folder in (data_dir, file.parent):
        candidate = folder / name.strip()
        if candidate.is_file():
            return candidate
        matches = [candidate.with_name(candidate.name + ext) for ext in sorted(IMAGE_EXTENSIONS)]
        found = next((m for m in matches if m.is_file()), None)
        if found is not None:
            return found
    raise DataError(f"label file {file} {where} names {name!r}, which is not in {data_dir}: fix the name or add the "
                    f"image")


def _label(value: str, file: Path, where: str) -> int:
    label = LABEL_VALUES.get(re.sub(r"\.0$", "", value.strip().lower()))
    if label is None:
        raise DataError(f"label file {file} {where} has label {value!r}: use real/fake or 0/1")
    return label


def _folders_in_play(labels: dict[Path, int], data_dir: Path) -> list[Path]:
    """The class folders when the data folder has them, else the folders the labelled images are in."""
    try:
        return list(find_labelled_dirs(data_dir))
    except DataError:
        return sorted({path.parent for path in labels})


def load_labelled_from_files(files: Sequence[str | Path], data_dir: str | Path, size: int = 32) -> tuple[ImageSet, dict]:
    """Every image the label files name, with their labels (class folders' images in folder order, else the
    files' order), and what to record of the source: the files, and how many labels differ from the folder
    names when the images sit in class folders."""
    labels = read_labels(files, data_dir)
    folders = _folders_in_play(labels, Path(data_dir))
    resolved = {path.resolve(): label for path, label in labels.items()}
    in_folders = [image for folder in folders for image in list_image_files(folder)]
    paths = in_folders if len(in_folders) == len(labels) else list(labels)
    values = np.array([resolved[path.resolve()] for path in paths], dtype=np.int64)
    try:
        folder_labels = {image.resolve(): label for label, folder in enumerate(find_labelled_dirs(data_dir))
                         for image in list_image_files(folder)}
        differ = int(sum(folder_labels.get(path.resolve(), label) != label for path, label in zip(paths, values)))
    except DataError:
        differ = None
    images, _ = load_images(paths, size)
    return ImageSet(images, values, [str(p) for p in paths]), {"files": [str(f) for f in files],
                                                               "differ_from_folder_names": differ}
