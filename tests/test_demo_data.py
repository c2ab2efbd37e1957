"""The embedded demo set: deterministic, reused, learnable but not trivially separable."""
import numpy as np
import torch
from torch import nn

from deepfake.data import find_test_dir, list_image_files, load_labelled, load_test, split_indices, to_tensor
from deepfake.demo_data import MANIFEST, build_demo_dataset
from deepfake.io import read_json


def test_demo_set_layout_and_determinism(tmp_path):
    first = build_demo_dataset(tmp_path / "a", per_class=20, test_count=7, seed=3)
    second = build_demo_dataset(tmp_path / "b", per_class=20, test_count=7, seed=3)
    other = build_demo_dataset(tmp_path / "c", per_class=20, test_count=7, seed=4)
    a, b, c = (load_labelled(root) for root in (first, second, other))
    assert a.images.shape == (40, 32, 32, 3) and np.bincount(a.labels).tolist() == [20, 20]
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    test, indices = load_test(find_test_dir(first))
    assert len(test) == 7 and indices == list(range(1, 8)) and test.labels.tolist() == [-1] * 7
    assert np.array_equal(test.images, load_test(find_test_dir(second))[0].images)
    assert sorted(read_json(first / MANIFEST)["test_labels"]) == [0, 0, 0, 0, 1, 1, 1]


def test_demo_set_is_reused_and_rebuilt_when_parameters_change(tmp_path):
    root = build_demo_dataset(tmp_path / "demo", per_class=12, test_count=4, seed=0)
    stamp = (root / "train" / "fake" / "1.png").stat().st_mtime_ns
    assert build_demo_dataset(root, per_class=12, test_count=4, seed=0) == root
    assert (root / "train" / "fake" / "1.png").stat().st_mtime_ns == stamp
    build_demo_dataset(root, per_class=5, test_count=3, seed=0)
    assert len(list_image_files(root / "train" / "fake")) == 5 and len(list_image_files(root / "test")) == 3
    assert sorted(p.name for p in root.iterdir()) == sorted([MANIFEST, "test", "train"])  # no staging left


def validation_accuracy(root) -> float:
    """A tiny CNN trained for 250 steps on 75% of the demo set, scored on the rest."""
    data = load_labelled(root)
    train, val = split_indices(data.labels, 0.25, seed=0)
    x, y = to_tensor(data.images).float() / 255, torch.from_numpy(data.labels)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    train = torch.from_numpy(train)
    for _ in range(250):
        idx = train[torch.randint(len(train), (64,), generator=generator)]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (model(x[val]).argmax(1) == y[val]).float().mean().item()


def test_demo_set_is_learnable_but_not_trivial(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model; more threads only contend on a shared 2-core machine
    try:
        accuracy = validation_accuracy(build_demo_dataset(tmp_path / "demo"))  # the set a fresh run gets
    finally:
        torch.set_num_threads(threads)
    assert 0.75 <= accuracy <= 0.98, f"demo set should be learnable but not trivial, got {accuracy:.3f}"
