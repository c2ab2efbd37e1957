"""Calling any image or folder real or fake with the submission's ensemble, with the evidence, at any volume.

The members, weights and cut are the ones ``ensemble.py`` submits with (:func:`ensemble.load_ensemble`)
and every file is read by the loader training uses (:func:`data.read_image`), so an image gets the
same call here as in a submission. Files are listed lazily and read, scored and written one batch
at a time, so memory stays flat whatever their number; a file that cannot be read is named with
the reason and skipped, and only a run that scores nothing fails.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from .data import CLASS_NAMES, DecodedImage, UnreadableImageError, is_image_file, read_image, to_tensor, walk_files
from .ensemble import Ensemble, load_ensemble
from .submission import predicted_classes
from .errors import DeepfakeError
from .explain import gradcam
from .folds import FoldAverage
from .inference import to_float
from .io import atomic_path
from .plots import plot_call

log = logging.getLogger(__name__)

BATCH_FILES = 512  # files read and scored at a time: memory holds one batch of images, whatever the total
ONE_LINE_EACH = 20  # up to this many images get one console line each; more get a progress bar and the summary
EXPLAIN_LIMIT = 100  # --explain draws the first this many images' figures (Grad-CAM per model costs ~0.3 s each)
NAMED_IGNORED = 5  # ignored files the log names
OUTPUT_FORMATS = (".csv", ".json")


class PredictError(DeepfakeError):
    """A path or option predict.py cannot work with."""


class NothingScoredError(PredictError):
    """Not one image could be scored, so the run has no answer at all."""

    exit_status = 1


@dataclass
class Summary:
    """What a run did: images scored (per call), files skipped or ignored, images resized or converted."""

    threshold: float
    threshold_from: str
    image_size: int
    scored: int = 0
    real: int = 0
    fake: int = 0
    skipped: int = 0  # candidate files that could not be read
    ignored: int = 0  # files in the folders without an image extension
    resized: int = 0
    converted: int = 0
    explained: int = 0

    def line(self) -> str:
        cut = "chosen on validation" if self.threshold_from == "validation" else "from --threshold"
        ignored = f"; ignored {_plural(self.ignored, 'non-image file')}" if self.ignored else ""
        return (f"scored {_plural(self.scored, 'image')}: {self.real} real, {self.fake} fake "
                f"(cut {self.threshold:.4f}, {cut}); skipped {_plural(self.skipped, 'unreadable file')}{ignored}; "
                f"resized {self.resized} to {self.image_size}x{self.image_size}, converted {self.converted} to RGB")


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------

def listed_files(paths: Iterable[Path]) -> Iterator[tuple[Path, bool]]:
    """Every file the paths name or hold, in order, and whether to score it: a file named outright always
    (its reading says whether it is an image), a file in a folder when its name is an image's."""
    for path in paths:
        if path.is_dir():
            yield from ((file, is_image_file(file)) for file in walk_files(path))
        else:
            yield path, True


def image_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The files to score, lazily (see :func:`listed_files`)."""
    return (path for path, wanted in listed_files(paths) if wanted)


def count_files(paths: Sequence[Path]) -> tuple[int, int, list[Path]]:
    """How many files will be scored, how many in the folders are left out for their names, and the first few."""
    scored, ignored, named = 0, 0, []
    for path, wanted in listed_files(paths):
        scored += wanted
        if not wanted:
            ignored += 1
            if len(named) < NAMED_IGNORED:
                named.append(path)
    return scored, ignored, named


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` items (the last one shorter), drawn lazily."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# ---------------------------------------------------------------------------------------------
# Reading, scoring, writing
# ---------------------------------------------------------------------------------------------

def read_batch(paths: list[Path], size: int) -> tuple[list[tuple[Path, DecodedImage]], int]:
    """The readable files of a batch with their images, and how many were skipped (each logged with its reason)."""
    readable = []
    for path in paths:
        try:
            readable.append((path, read_image(path, size)))
        except UnreadableImageError as error:
            log.warning("skipped %s: %s", path, error.reason)
    return readable, len(paths) - len(readable)


def prediction_rows(images: list[tuple[Path, DecodedImage]], member_probs: dict[str, np.ndarray],
                    ensemble_probs: np.ndarray, threshold: float) -> list[dict]:
    """One record per image: path, the ensemble's and each member's fake probability, the call, and flags."""
    calls = predicted_classes(ensemble_probs, threshold)
    return [
        {"path": str(path), "proba_ensemble": float(ensemble_probs[i]),
         **{f"proba_{name}": float(probs[i]) for name, probs in member_probs.items()},
         "prediction": calls[i], "resized": image.resized, "converted": image.converted}
        for i, (path, image) in enumerate(images)
    ]


def output_format(output: Path | None) -> str | None:
    """".csv" or ".json" from the output's name; PredictError for any other before any work is done."""
    if output is None:
        return None
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise PredictError(f"--output {output}: name a .csv or .json file")
    return suffix


@contextlib.contextmanager
def row_writer(output: Path | None, columns: list[str]) -> Iterator[Callable[[list[dict]], None]]:
    """A function appending records to ``output`` (CSV, or a JSON list) as they come; the file replaces
    ``output`` only when the block succeeds, so an interrupted run leaves the previous one in place."""
    if output is None:
        yield lambda rows: None
        return
    with atomic_path(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        if output_format(output) == ".csv":
            table = csv.DictWriter(handle, columns)
            table.writeheader()
            yield table.writerows
            return
        handle.write("[")
        first = True

        def write_json_rows(rows: list[dict]) -> None:
            nonlocal first
            for row in rows:
                handle.write(("\n" if first else ",\n") + json.dumps(row))
                first = False

        yield write_json_rows
        handle.write("\n]\n")


# ---------------------------------------------------------------------------------------------
# Explanations
# ---------------------------------------------------------------------------------------------

def explain_calls(ensemble: Ensemble, images: list[tuple[Path, DecodedImage]], rows: list[dict], explain_dir: Path,
                  taken: set[str]) -> None:
    """One figure per image (its record in ``rows``): the image, the ensemble's call and probability, and each
    member's Grad-CAM of that call. A member with a spectrum head is mapped through its pixel backbone only
    (the head reads the whole image's Fourier spectrum, which has no place in it)."""
    pixels = np.stack([image.pixels for _, image in images])
    x = to_float(to_tensor(pixels), ensemble.device)
    calls = [row["prediction"] for row in rows]
    shown = {name: model.models[0] if isinstance(model, FoldAverage) else model  # a fold average: its first fold's
             for name, model in ensemble.models.items()}
    cams = {name: gradcam(model, x, [CLASS_NAMES.index(call) for call in calls]) for name, model in shown.items()}
    for i, ((path, _), row) in enumerate(zip(images, rows)):
        overlays = {
            f"{name} (weight {ensemble.weights[name]:.2f})\nfake probability {row[f'proba_{name}']:.3f}\n"
            f"{'pixel backbone: ' if model.spectrum is not None else ''}"
            f"{'fold 0: ' if model is not ensemble.models[name] else ''}Grad-CAM for {calls[i]}": cams[name][i]
            for name, model in shown.items()
        }
        title = f"{path}: {calls[i]} (fake probability {row['proba_ensemble']:.4f}, cut {ensemble.threshold:.4f})"
        plot_call(pixels[i] / 255, title, overlays, explain_dir / figure_name(path, taken))


def figure_name(path: Path, taken: set[str]) -> str:
    """``photo.jpg`` -> ``photo.png``, then ``photo-2.png`` for the next ``photo.*`` of the run."""
    name, copy = f"{path.stem}.png", 1
    while name in taken:
        copy += 1
        name = f"{path.stem}-{copy}.png"
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------

def run_predict(
    paths: Sequence[str | Path],
    *,
    checkpoint_dir: str | Path | list[str | Path] = "checkpoints",
    checkpoints: list[str | Path] | None = None,
    output: str | Path | None = None,
    explain_dir: str | Path | None = None,
    operating_point: str | None = None,
    min_clean: float | None = None,
    scheme: str | None = None,
    threshold: float | None = None,
    device: str = "auto",
) -> Summary:
    """list -> load ensemble -> read, score, write (and explain) batch by batch -> summary.

    Bad paths and options fail before the models load; NothingScoredError when no file could be scored.
    """
    paths = [Path(p) for p in paths]
    output = None if output is None else Path(output)
    explain_dir = None if explain_dir is None else Path(explain_dir)
    for path in paths:
        if not path.exists():
            raise PredictError(f"{path} does not exist: name image files or folders of them")
    output_format(output)
    if explain_dir is not None and explain_dir.exists() and not explain_dir.is_dir():
        raise PredictError(f"--explain {explain_dir} is a file: name a folder for the figures")
    total, ignored, named = count_files(paths)
    if total == 0:
        raise NothingScoredError(f"no PNG, JPEG, WebP or BMP files in {', '.join(map(str, paths))}")

    ensemble = load_ensemble(checkpoint_dir, operating_point=operating_point, min_clean=min_clean, scheme=scheme,
                             threshold=threshold, checkpoints=checkpoints, device=device)  # sets up the log too
    size = ensemble.config.image_size
    summary = Summary(ensemble.threshold, ensemble.threshold_from, size, ignored=ignored)
    if ignored:
        log.info("ignored %s in the folders, not PNG, JPEG, WebP or BMP by name (%s%s)", _plural(ignored, "file"),
                 ", ".join(str(p) for p in named), ", ..." if ignored > len(named) else "")
    if explain_dir is not None and total > EXPLAIN_LIMIT:
        log.warning("--explain draws the first %d images of the %d files (Grad-CAM figures are for a closer look, "
                    "not for volume: name fewer files to explain others)", EXPLAIN_LIMIT, total)
    log.info("calling %d files with %d models at cut %.4f (%s)", total, len(ensemble.models), ensemble.threshold,
             ensemble.threshold_from)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # each skipped file gets one line, below
    columns = ["path", "proba_ensemble", *(f"proba_{name}" for name in ensemble.models),
               "prediction", "resized", "converted"]
    one_line_each, taken = total <= ONE_LINE_EACH, set()
    with row_writer(output, columns) as write_rows, \
            tqdm(total=total, unit="image", desc="predict", disable=one_line_each) as progress:
        for batch in batches(image_files(paths), BATCH_FILES):
            images, skipped = read_batch(batch, size)
            summary.skipped += skipped
            if images:
                member_probs, ensemble_probs = ensemble.predict(np.stack([image.pixels for _, image in images]))
                rows = prediction_rows(images, member_probs, ensemble_probs, ensemble.threshold)
                write_rows(rows)
                _tally(summary, rows)
                if one_line_each:
                    for row in rows:
                        print(_call_line(row, size))
                if explain_dir is not None and summary.explained < EXPLAIN_LIMIT:
                    shown = EXPLAIN_LIMIT - summary.explained
                    explain_calls(ensemble, images[:shown], rows[:shown], explain_dir, taken)
                    summary.explained += len(rows[:shown])
            progress.update(len(batch))
        if summary.scored == 0:
            raise NothingScoredError(f"none of the {total} files could be read as an image (each is named above)")
    print(summary.line())
    if output is not None:
        log.info("wrote %s", output)
    if summary.explained:
        log.info("wrote %d figures to %s", summary.explained, explain_dir)
    return summary


def _tally(summary: Summary, rows: list[dict]) -> None:
    for row in rows:
        summary.scored += 1
        summary.real += row["prediction"] == "real"
        summary.fake += row["prediction"] == "fake"
        summary.resized += row["resized"]
        summary.converted += row["converted"]


def _call_line(row: dict, size: int) -> str:
    changes = [change for change, done in ((f"resized to {size}x{size}", row["resized"]),
                                           ("converted to RGB", row["converted"])) if done]
    return (f"{row['path']}: {row['prediction']} (fake probability {row['proba_ensemble']:.4f})"
            + (f" [{', '.join(changes)}]" if changes else ""))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
