"""Several processes under torchrun: shards that partition each epoch, one set of files, ranks that agree."""
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from deepfake import distributed
from deepfake.checkpoints import load_checkpoint
from deepfake.data import load_split
from deepfake.inference import predict_fake_proba
from deepfake.metrics import classification_metrics
from deepfake.results import load_results, results_path


@pytest.mark.parametrize("ranks,count", [(2, 10), (3, 10), (4, 3)])
def test_the_shards_of_an_epoch_cover_it_in_equal_lengths(monkeypatch, ranks, count):
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(distributed, "world_size", lambda: ranks)
    shards = []
    for rank in range(ranks):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        shards.append(distributed.shard(order))
    assert len({len(s) for s in shards}) == 1, "every rank takes the same number of steps"
    together = torch.cat(shards)
    assert set(together.tolist()) == set(order.tolist())
    assert len(together) - count < ranks, "only the wrap-around to a multiple of the ranks repeats images"


def test_a_plain_process_is_its_own_world():
    order = torch.arange(7)
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.shard(order) is order and distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.any_rank(False) is False and distributed.sum_over_ranks(1.0, 2) == [1.0, 2]
    assert distributed.main_first(lambda: 3) == 3


def test_two_processes_train_one_model_and_write_one_run(tmp_path, demo_dir):
    """torchrun --nproc_per_node 2 on CPU (gloo): rank 0 writes one set of files; both ranks keep the same epoch."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               str(REPO_ROOT / "deepfake_detection.py"), "--preset", "tiny", "--models", "resnet_se",
               "--data-dir", str(demo_dir), "--checkpoint-dir", str(out / "checkpoints"),
               "--generated-dir", str(out / "generated"), "--viz-dir", str(out / "visualizations"), "--device", "cpu",
               "--epochs", "4", "--batch-size", "16", "--set", "precision=fp32", "max_steps_per_epoch=0", "patience=2", "lr=3e-3",
               "resnet_se.width=0.25"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]

    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "resnet_se_base.pt", "resnet_se_final.pt", "results.json", "split.json"]
    assert not list(tmp_path.glob("**/*.tmp")), "no rank left a half-written file"
    results = load_results(results_path(checkpoints))
    entry = results["models"]["resnet_se"]
    _, val, _ = load_split(checkpoints / "split.json")
    for phase in ("base", "final"):
        model = load_checkpoint(checkpoints / f"resnet_se_{phase}.pt")  # keys without DDP's "module." prefix
        accuracy = classification_metrics(val.labels, predict_fake_proba(model, val.images))["accuracy"]
        assert accuracy == entry["val"][phase]["accuracy"] > 0.5
    assert entry["evaluation"]["final"]["attacks"]

    kept = {rank: int(epoch) for rank, epoch in
            re.findall(r"\[rank (\d)\] resnet_se: base done, kept epoch (\d+)", log)}
    assert kept == {"0": entry["best_epoch"], "1": entry["best_epoch"]}
    epochs_run = len(entry["history"]["base"])
    assert len(re.findall(r"resnet_se base epoch \d+/4", log)) == 2 * epochs_run, "both ranks stopped together"


def _main_first_on_two_ranks(rank: int, failing_rank: int, store: str, out: str) -> None:
    """One gloo rank of main_first whose section fails on ``failing_rank``; writes what the rank ended with."""
    import torch.distributed as dist

    from deepfake.errors import ConfigError

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def make() -> str:
        if rank == failing_rank:
            raise ConfigError(f"cannot read image {rank}.png")
        return "made"

    try:
        outcome = distributed.main_first(make)
        distributed.barrier()  # where a rank waited for the backend's timeout when another had failed
    except Exception as error:
        outcome = f"{type(error).__name__}: {error}"
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as file:
        file.write(outcome)


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_rank_failing_in_a_main_first_section_stops_every_rank_with_its_message(tmp_path, failing_rank):
    import multiprocessing
    import time

    context = multiprocessing.get_context("spawn")
    out = tmp_path / "outcome"
    started = time.monotonic()
    ranks = [context.Process(target=_main_first_on_two_ranks, args=(rank, failing_rank, str(tmp_path / "store"),
                                                                       str(out))) for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
    assert not any(process.is_alive() for process in ranks), "a rank still waits for the failed one"
    for process in ranks:
        process.kill()
    assert time.monotonic() - started < 120
    outcomes = {rank: (tmp_path / f"outcome.{rank}").read_text() for rank in range(2)}
    other = 1 - failing_rank
    assert outcomes[failing_rank] == f"ConfigError: cannot read image {failing_rank}.png"
    assert outcomes[other] == f"RankFailedError: rank {failing_rank} failed: cannot read image {failing_rank}.png"
