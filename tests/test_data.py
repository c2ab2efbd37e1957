"""Layout discovery, robust loading, the saved split, test-file ordering and augmentation."""
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import deepfake.data as data_module
from deepfake.config import AUGMENTATIONS
from deepfake.data import (DataError, ImageSet, UnreadableImageError, augment, file_number, find_labelled_dirs,
                           find_test_dir, list_image_files, load_images, load_labelled, load_split, load_test,
                           load_validation, order_test_files, read_image, resolve_data_dir, sample_transform, save_split,
                           split_indices, to_tensor, train_transform)


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def rgb(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_layout(root: Path, real: str, fake: str, n: int = 3) -> Path:
    for i in range(n):
        write_image(root / real / f"{i}.png", rgb(i))
        write_image(root / fake / f"{i}.png", rgb(100 + i))
    return root


@pytest.mark.parametrize("real,fake", [
    ("train/real", "train/fake"), ("real_cifake_images", "fake_cifake_images"), ("real", "fake"),
    ("train/REAL", "train/FAKE"), ("Train/Real", "Train/Fake"), ("REAL_CIFAKE_IMAGES", "Fake_Cifake_Images"),
])
def test_each_layout_is_found(tmp_path, real, fake):
    make_layout(tmp_path, real, fake)
    assert find_labelled_dirs(tmp_path) == (tmp_path / real, tmp_path / fake)
    data = load_labelled(tmp_path)
    assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.labels.dtype == np.int64
    # BGR on disk, RGB in memory.
    assert np.array_equal(data.images[0], rgb(0)[:, :, ::-1])
    assert data.paths[3] == str(tmp_path / fake / "0.png")


def test_missing_folder_empty_class_and_lone_class_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="train/real \\+ train/fake"):
        load_labelled(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_labelled(tmp_path / "nope")
    make_layout(tmp_path, "real", "fake")
    for f in (tmp_path / "fake").iterdir():
        f.unlink()
    (tmp_path / "fake" / "notes.txt").write_text("images go here")
    with pytest.raises(DataError, match="no fake images in .*fake: add"):
        load_labelled(tmp_path)
    (tmp_path / "fake" / "notes.txt").unlink()
    (tmp_path / "fake").rmdir()
    with pytest.raises(DataError, match="found .*real but not .*fake"):
        find_labelled_dirs(tmp_path)


def test_odd_images_become_rgb_at_the_configured_size(tmp_path, caplog):
    root = make_layout(tmp_path, "real", "fake", n=1)
    write_image(root / "real" / "gray.png", rgb(1)[:, :, 0])
    write_image(root / "real" / "rgba.png", np.dstack([rgb(2), np.full((32, 32), 255, np.uint8)]))
    write_image(root / "real" / "gray16.png", rgb(3)[:, :, 0].astype(np.uint16) * 257)
    write_image(root / "fake" / "big.jpg", rgb(3, size=64))
    write_image(root / "fake" / "small.png", rgb(3, size=20))
    write_image(root / "fake" / "x.bmp", rgb(4))
    write_image(root / "fake" / "x.webp", rgb(5))
    Image.fromarray(rgb(6)).convert("P").save(root / "fake" / "palette.png")
    for junk in (".DS_Store", "Thumbs.db", "notes.txt", "._0.png"):
        (root / "real" / junk).write_bytes(b"\0\1 not an image")
    (root / "real" / "nested").mkdir()
    write_image(root / "real" / "nested" / "deeper.png", rgb(7))
    with caplog.at_level(logging.INFO, logger="deepfake.data"):
        data = load_labelled(root)
    assert data.images.shape == (10, 32, 32, 3) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [4, 6]
    assert [r.getMessage() for r in caplog.records] == ["resized 2 of 10 images to 32x32"]

    def image(name: str) -> np.ndarray:
        return next(im for im, p in zip(data.images, data.paths) if p.endswith(name))

    assert np.array_equal(image("gray.png"), np.repeat(rgb(1)[:, :, :1], 3, axis=2))
    assert np.array_equal(image("gray16.png")[:, :, 0], rgb(3)[:, :, 0])
    assert np.array_equal(image("rgba.png"), rgb(2)[:, :, ::-1])
    assert np.array_equal(image("palette.png"), np.asarray(Image.open(root / "fake" / "palette.png").convert("RGB")))
    assert np.array_equal(image("x.bmp"), rgb(4)[:, :, ::-1])
    assert np.abs(image("big.jpg").astype(int) - cv2.resize(rgb(3, 64), (32, 32), interpolation=cv2.INTER_AREA)[
        :, :, ::-1]).mean() < 20  # JPEG is lossy; the resize is INTER_AREA


def test_transparency_is_composited_on_white(tmp_path):
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[..., 1] = 200  # green under the alpha
    pixels[:16, ..., 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(pixels[..., [1, 3]], "LA").save(tmp_path / "la.png")
    images, resized = load_images([tmp_path / "rgba.png", tmp_path / "la.png"])
    assert resized == 0
    assert images[0, 0, 0].tolist() == [0, 200, 0] and images[0, -1, 0].tolist() == [255, 255, 255]
    assert images[1, 0, 0].tolist() == [200, 200, 200] and images[1, -1, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n broken", b"hello"])
def test_corrupt_image_stops_with_its_name(tmp_path, content):
    root = make_layout(tmp_path, "real", "fake", n=1)
    (root / "fake" / "broken.png").write_bytes(content)
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png: .*delete or replace it"):
        load_labelled(root)


def test_many_files_load_on_threads_in_their_order_and_the_first_corrupt_one_is_named(tmp_path, monkeypatch):
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), rgb(i * 6))
    one_by_one, _ = load_images(paths)
    monkeypatch.setattr(data_module, "LOAD_CHUNK", 3)
    threaded, _ = load_images(paths)
    assert np.array_equal(threaded, one_by_one)
    for name in ("25.png", "31.png"):
        (tmp_path / name).write_bytes(b"broken")
    with pytest.raises(DataError, match=r"25\.png"):
        load_images(paths)


def test_truncated_png_stops_with_its_name(tmp_path):
    png = cv2.imencode(".png", rgb(0))[1].tobytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(DataError, match="cut.png"):
        load_images([tmp_path / "cut.png"])



def test_read_image_says_what_reading_changed_and_why_a_file_is_no_image(tmp_path):
    write_image(tmp_path / "rgb.png", rgb(0))
    write_image(tmp_path / "gray.png", rgb(0)[:, :, 0])
    write_image(tmp_path / "big.bmp", rgb(0, 64))
    Image.fromarray(rgb(0)).convert("P").save(tmp_path / "palette.png")
    flags = {name: (image.resized, image.converted) for name in ("rgb.png", "gray.png", "big.bmp", "palette.png")
             for image in [read_image(tmp_path / name)]}
    assert flags == {"rgb.png": (False, False), "gray.png": (False, True), "big.bmp": (True, False),
                     "palette.png": (False, False)}  # the decoder expands a palette itself
    assert read_image(tmp_path / "big.bmp").pixels.shape == (32, 32, 3)
    (tmp_path / "empty.png").write_bytes(b"")
    for path, reason in ((tmp_path / "empty.png", "the file is empty"), (tmp_path, "Is a directory")):
        with pytest.raises(UnreadableImageError) as error:
            read_image(path)
        assert (error.value.path, error.value.reason) == (path, reason)

def test_split_is_stratified_disjoint_and_reloads_identically(tmp_path, monkeypatch):
    root = make_layout(tmp_path / "data", "real", "fake", n=25)
    for i in range(25, 40):  # 25 real, 40 fake
        write_image(root / "fake" / f"{i}.png", rgb(200 + i))
    data = load_labelled(root)
    train, val = split_indices(data.labels, 0.2, seed=1)
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(len(data)))
    assert np.bincount(data.labels[val]).tolist() == [5, 8]
    assert np.array_equal(split_indices(data.labels, 0.2, seed=1)[1], val)
    assert not np.array_equal(split_indices(data.labels, 0.2, seed=2)[1], val)
    with pytest.raises(DataError, match=r"the images in x \(1 real, 2 fake\) are too few .* 0.5 .*: add images"):
        split_indices(np.array([0, 1, 1]), 0.5, seed=1, source="the images in x")
    save_split(tmp_path / "split.json", data.subset(train), data.subset(val), seed=1, data_dir=str(root))
    train_set, val_set, meta = load_split(tmp_path / "split.json")
    assert meta == {"seed": 1, "data_dir": str(root)}
    assert val_set.paths == data.subset(val).paths and train_set.paths == data.subset(train).paths
    assert np.array_equal(val_set.images, data.images[val]) and np.array_equal(train_set.images, data.images[train])
    assert np.array_equal(train_set.labels, data.labels[train]) and np.array_equal(val_set.labels, data.labels[val])
    alone, alone_meta = load_validation(tmp_path / "split.json")
    assert alone.paths == val_set.paths and np.array_equal(alone.images, val_set.images)
    assert np.array_equal(alone.labels, val_set.labels) and alone_meta == meta
    gone_train = ImageSet(data.images[:1], data.labels[:1], [str(tmp_path / "deleted.png")])
    save_split(tmp_path / "no_train.json", gone_train, data.subset(val))  # evaluation reads no training image
    assert load_validation(tmp_path / "no_train.json")[0].paths == val_set.paths
    with pytest.raises(DataError, match="is gone"):
        load_split(tmp_path / "no_train.json")
    monkeypatch.chdir(root)
    relative = ImageSet(data.images[:1], data.labels[:1], ["real/0.png"])
    save_split(tmp_path / "relative.json", data.subset(train), relative)
    assert load_split(tmp_path / "relative.json")[1].paths == ["real/0.png"]
    monkeypatch.chdir(tmp_path)  # another folder: the recorded training folder still finds the image
    moved_val = load_split(tmp_path / "relative.json")[1]
    assert moved_val.paths == ["real/0.png"] and np.array_equal(moved_val.images, data.images[:1])
    saved = json.loads((tmp_path / "relative.json").read_text())
    del saved["cwd"]  # a split written before the training folder was recorded
    (tmp_path / "relative.json").write_text(json.dumps(saved))
    with pytest.raises(DataError, match="real/0.png of the saved split .* is not under .*: run from the folder"):
        load_split(tmp_path / "relative.json")
    Path(val_set.paths[0]).unlink()
    with pytest.raises(DataError, match="is gone: restore it"):
        load_split(tmp_path / "split.json")
    (tmp_path / "split.json").write_text("{not json")
    with pytest.raises(DataError, match="damaged"):
        load_split(tmp_path / "split.json")


def test_image_set_subset_concat_and_tensor():
    images = np.stack([rgb(i) for i in range(4)])
    data = ImageSet(images, np.array([0, 1, 0, 1]), [f"{i}.png" for i in range(4)])
    both = ImageSet.concat(data.subset([3, 0]), data.subset([1]))
    assert len(both) == 3 and both.paths == ["3.png", "0.png", "1.png"] and both.labels.tolist() == [1, 0, 1]
    tensor = to_tensor(both.images)
    assert tensor.shape == (3, 3, 32, 32) and tensor.is_contiguous() and str(tensor.dtype) == "torch.uint8"
    assert np.array_equal(tensor[0].permute(1, 2, 0).numpy(), images[3])


def test_test_files_are_ordered_by_number():
    names = [f"{i}.png" for i in range(1, 13)]
    ordered, indices, warning = order_test_files([Path(n) for n in sorted(names)])  # 1, 10, 11, 12, 2, ...
    assert indices == list(range(1, 13)) and warning is None
    assert [p.name for p in ordered] == names
    assert file_number("img_0007.png") == 7 and file_number("0010.png") == 10
    assert file_number("a.png") is None and file_number("v2_img_7.png") is None
    padded, indices, _ = order_test_files(["img_0010.png", "img_0002.png"])
    assert indices == [2, 10] and padded[0].name == "img_0002.png"


def test_unnumbered_or_duplicate_test_files_fall_back_to_natural_order_by_position():
    for problem, named in ((["b.png", "a2.png", "a10.png"], "no single number in the name (b.png)"),
                           (["1.png", "01.png", "2.png"], "a number shared (01.png, 1.png)")):
        ordered, indices, warning = order_test_files([Path(n) for n in problem])
        assert warning and named in warning and "1..3" in warning and indices == [1, 2, 3]
    ordered, _, _ = order_test_files([Path(n) for n in ["b.png", "a10.png", "a2.png"]])
    assert [p.name for p in ordered] == ["a2.png", "a10.png", "b.png"]


def test_unlabelled_test_folder_is_loaded_in_number_order(tmp_path, caplog):
    for number in (10, 2, 1):
        write_image(tmp_path / "Test" / f"{number}.png", rgb(number))
    (tmp_path / "Test" / "readme.txt").write_text("x")
    test_dir = find_test_dir(tmp_path)
    assert test_dir == tmp_path / "Test"
    images, indices = load_test(test_dir)
    assert indices == [1, 2, 10] and images.labels.tolist() == [-1, -1, -1]
    assert np.array_equal(images.images[2], rgb(10)[:, :, ::-1])
    write_image(tmp_path / "Test" / "cover.png", rgb(0))
    with caplog.at_level(logging.WARNING, logger="deepfake.data"):
        _, indices = load_test(test_dir)
    assert indices == [1, 2, 3, 4] and "natural name order" in caplog.text


def test_labelled_test_folder_and_missing_test_folder(tmp_path):
    make_layout(tmp_path, "test/REAL", "test/FAKE", n=2)
    images, indices = load_test(tmp_path / "test")
    assert images.labels.tolist() == [0, 0, 1, 1] and indices == [1, 2, 3, 4]
    assert find_test_dir(tmp_path / "test") is None
    with pytest.raises(DataError, match="does not exist"):
        load_test(tmp_path / "nope")


def test_demo_fallback_only_when_data_dir_has_no_labelled_images(tmp_path, caplog):
    demo = tmp_path / "demo"
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "empty", explicit=True, demo_root=demo)
    (tmp_path / "empty" / "train" / "real").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "fake").mkdir()
    with pytest.raises(DataError, match="no labelled images"):
        resolve_data_dir(tmp_path / "empty", explicit=True, demo_root=demo)
    with caplog.at_level(logging.INFO, logger="deepfake.data"):
        assert resolve_data_dir(tmp_path / "empty", explicit=False, demo_root=demo) == demo
    assert "no labelled images in" in caplog.text and "building demo data in" in caplog.text
    assert load_labelled(demo).images.shape == (600, 32, 32, 3)
    stamp = (demo / "train" / "real" / "1.png").stat().st_mtime_ns
    assert resolve_data_dir(tmp_path / "absent", explicit=False, demo_root=demo) == demo
    assert (demo / "train" / "real" / "1.png").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_half_filled_data_dir_is_an_error_not_a_demo_run(tmp_path):
    make_layout(tmp_path, "train/real", "train/fake")
    assert resolve_data_dir(tmp_path, explicit=False, demo_root=tmp_path / "demo") == tmp_path
    for f in (tmp_path / "train" / "fake").iterdir():
        f.unlink()
    assert resolve_data_dir(tmp_path, explicit=False, demo_root=tmp_path / "demo") == tmp_path
    with pytest.raises(DataError, match="no fake images"):
        load_labelled(tmp_path)
    (tmp_path / "train" / "fake").rmdir()
    with pytest.raises(DataError, match="but not"):
        resolve_data_dir(tmp_path, explicit=False, demo_root=tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_augment_is_deterministic_and_keeps_shape():
    images = np.stack([rgb(i) for i in range(16)])
    for transform in [make(style) for style in AUGMENTATIONS for make in (train_transform, sample_transform)]:
        first, again = augment(images, transform, seed=5), augment(images, transform, seed=5)
        assert first.shape == images.shape and first.dtype == np.uint8
        assert np.array_equal(first, again) and not np.array_equal(first, augment(images, transform, seed=6))
        assert not np.array_equal(first, images)
    large = np.stack([rgb(i, size=64) for i in range(4)])
    assert augment(large, sample_transform("seed", 64), seed=0).shape == large.shape
    assert augment(large, sample_transform("lossless", 64), seed=0).shape == large.shape
    assert augment(images[:0], train_transform(), seed=0).shape == (0, 32, 32, 3)


def test_lossless_augmentation_only_moves_pixels_and_the_seed_style_makes_new_colours():
    """Generator traces live in exact pixel values: lossless outputs reuse the source's colours only."""
    images = np.stack([rgb(i) for i in range(8)])
    for make in (train_transform, sample_transform):
        lossless = augment(images, make("lossless"), seed=1)
        for source, output in zip(images, lossless):
            assert set(map(tuple, output.reshape(-1, 3))) <= set(map(tuple, source.reshape(-1, 3)))
    seed_style = augment(images, sample_transform("seed"), seed=1)
    assert any(not set(map(tuple, o.reshape(-1, 3))) <= set(map(tuple, s.reshape(-1, 3)))
               for s, o in zip(images, seed_style))
    with pytest.raises(ValueError, match="lossless"):
        train_transform("heavy")


def test_corruption_prob_corrupts_about_that_share_of_training_images():
    images = np.stack([rgb(i) for i in range(200)])

    def new_colours(output: np.ndarray, source: np.ndarray) -> bool:
        return not set(map(tuple, output.reshape(-1, 3))) <= set(map(tuple, source.reshape(-1, 3)))

    for prob, low, high in [(0.0, 0.0, 0.0), (0.3, 0.2, 0.4), (1.0, 1.0, 1.0)]:
        outputs = augment(images, train_transform("lossless", 32, corruption_prob=prob), seed=3)
        share = np.mean([new_colours(o, s) for o, s in zip(outputs, images)])
        assert low <= share <= high, (prob, share)


def test_challenge_data_loads_in_file_order(shared_data):
    data = load_labelled(shared_data)
    assert data.images.shape == (1400, 32, 32, 3) and np.bincount(data.labels).tolist() == [700, 700]
    test, indices = load_test(find_test_dir(shared_data))
    assert indices == list(range(1, 501)) and test.images.shape == (500, 32, 32, 3)
    assert [file_number(p) for p in test.paths] == indices
    assert len(list_image_files(shared_data / "test")) == 500
