"""Training batches: the worker processes a GPU run uses draw exactly the jitter the CPU run draws in-process."""
import numpy as np
import pytest
import torch

from deepfake.batches import EpochPlan, JitteredBatches, batch_loader, worker_count
from deepfake.data import augment, to_tensor, train_transform


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 2 workers on a 1-core test host
def test_worker_processes_make_the_batches_the_training_process_makes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = torch.arange(40) % 2
    transform = train_transform("lossless", 32, corruption_prob=0.5)  # mirror, shift and the corruption share
    batches = JitteredBatches(images, labels, transform)
    epochs = [[(torch.randperm(40, generator=torch.Generator().manual_seed(epoch))[i * 8:(i + 1) * 8],
                1000 * epoch + i) for i in range(5)] for epoch in range(2)]
    made = {}
    for workers in (0, 2):
        plan = EpochPlan()
        loader = batch_loader(batches, plan, workers)
        made[workers] = []
        for keys in epochs:  # the same workers serve both epochs, each with its new plan
            plan.keys = keys
            made[workers] += list(loader)
    expected = [(to_tensor(augment(images[idx.numpy()], transform, seed)), labels[idx]) for keys in epochs
                for idx, seed in keys]
    assert len(made[0]) == len(made[2]) == len(expected) == 10
    for (x0, y0), (x2, y2), (x, y) in zip(made[0], made[2], expected):
        assert x0.dtype == torch.uint8 and x0.shape == (8, 3, 32, 32)
        assert torch.equal(x0, x) and torch.equal(x2, x) and torch.equal(y0, y) and torch.equal(y2, y)
    assert not torch.equal(made[0][0][0], to_tensor(images[epochs[0][0][0].numpy()])), "the batch is jittered"


def test_only_a_gpu_run_spends_processes_on_the_jitter(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert worker_count(torch.device("cpu")) == 0
    assert worker_count(torch.device("cuda")) == 8 and worker_count(torch.device("cuda"), ranks=4) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert worker_count(torch.device("cuda"), ranks=2) == 1, "every GPU gets at least one"


def test_a_pass_over_the_batches_leaves_the_global_random_state_alone():
    """Dropout and drop-path draw from it: a loader that moved it would change what every model learns."""
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    plan = EpochPlan()
    plan.keys = [(torch.arange(4), 0)]
    loader = batch_loader(JitteredBatches(images, torch.zeros(4, dtype=torch.long), train_transform("lossless")), plan)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert len(list(loader)) == 1
    assert torch.equal(torch.rand(3), expected)
