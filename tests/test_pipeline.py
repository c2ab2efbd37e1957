"""End to end on demo data: checkpoints, generated samples, results, resume."""
import json
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from conftest import run_config
from deepfake.checkpoints import load_checkpoint, read_checkpoint
from deepfake.config import MODEL_NAMES, make_config
from deepfake.data import load_split
from deepfake.inference import predict_fake_proba
from deepfake.io import read_json, write_json
from deepfake.metrics import classification_metrics
from deepfake.pipeline import run
from deepfake.results import load_results, load_run_config, results_path
from deepfake.samples import sample_manifest
from deepfake.train import NonFiniteLossError

LIGHT = {"eval_max_images": 16, "gradcam_images": 0}  # a lighter evaluation; training and its fingerprints unchanged


def test_tiny_run_writes_checkpoints_samples_and_results(tiny_run):
    checkpoints = Path(tiny_run.checkpoint_dir)
    results = load_results(results_path(checkpoints))
    assert results["config"]["preset"] == "tiny" and results["seed"] == tiny_run.seed
    assert {"torch", "timm", "albumentations"} <= set(results["versions"])
    counts = results["data"]["counts"]
    assert counts["augmented"] == {"real": tiny_run.augment_per_class, "fake": tiny_run.augment_per_class}
    assert sum(counts["adversarial"].values()) == tiny_run.adversarial_count
    base_accuracy = {name: results["models"][name]["val"]["base"]["accuracy"] for name in MODEL_NAMES}
    assert results["adversarial_samples"]["crafted_by"] == max(MODEL_NAMES, key=base_accuracy.get)
    _, val, _ = load_split(checkpoints / "split.json", tiny_run.image_size)
    for name in MODEL_NAMES:
        entry = results["models"][name]
        for phase in ("base", "final"):
            path = checkpoints / f"{name}_{phase}.pt"
            assert entry["checkpoints"][phase] == str(path)
            assert read_checkpoint(path)["phase"] == phase
            rescored = classification_metrics(val.labels, predict_fake_proba(load_checkpoint(path), val.images))
            assert rescored["accuracy"] == entry["val"][phase]["accuracy"], "the saved weights are the scored ones"
        final = load_checkpoint(checkpoints / f"{name}_final.pt")
        recipe = tiny_run.member(name)
        assert not final.training and (final.spectrum is not None) == recipe.spectrum
        assert final.width == recipe.width and entry["recipe"] == json.loads(json.dumps(asdict(recipe)))
        assert len(entry["history"]["base"]) == recipe.base_epochs
        assert len(entry["history"]["finetune"]) == recipe.finetune_epochs
        assert entry["images_per_second"]["base"] > 0 and entry["wall_seconds"]["finetune"] > 0
        assert entry["pretrained"] is False
        assert entry["precision"] == dict.fromkeys(("base", "finetune"), "float32"), "the tests pin fp32"
        assert entry["precision_why"] == dict.fromkeys(("base", "finetune"), "precision=fp32 asked for")
    for stage in ("load_data", "augmented_samples", "adversarial_samples", "evaluate"):
        assert stage in results["timings"]


def test_samples_generated_inside_the_data_folder_are_not_read_back_as_labelled_images(tmp_path, demo_dir, caplog):
    """The default layout writes data/generated/ inside data/: a rerun must see the same labelled images."""
    data = shutil.copytree(demo_dir, tmp_path / "data")
    config = replace(run_config(tmp_path, data, models=("resnet_se",), **LIGHT), generated_dir=str(data / "generated"))
    run(config)
    generated = data / "generated"
    for kind in ("augmented", "adversarial"):
        manifest = sample_manifest(generated / kind)
        assert len(list((generated / kind).glob("*/*.png"))) == len(manifest["items"]) > 0
    labelled = sorted(str(p) for p in (data / "train").rglob("*.png"))
    train, val, _ = load_split(Path(config.checkpoint_dir) / "split.json", config.image_size)
    assert sorted(train.paths + val.paths) == labelled

    with caplog.at_level(logging.INFO, logger="deepfake"):
        run(config)
    assert "resnet_se: final checkpoint matches its recipe and the adversarial pool, skipping phase 2" in caplog.text


def test_resuming_gives_the_same_weights_one_recipe_retrains_one_member_and_a_subset_reuses_only_the_same_finals(
        tiny_run, tmp_path, demo_dir, monkeypatch, caplog):
    """Stopped after one member's phase 1, a run resumes to exactly the finals an uninterrupted run trains; a change
    to one member's recipe retrains that member alone; a --models subset reuses a final only where its best base
    model, which crafts phase 2's pool, is the same."""
    import deepfake.pipeline as pipeline

    train_phase, phases = pipeline.train_phase, []

    def interrupted_after_one_phase(*args, **kwargs):
        if phases:
            raise KeyboardInterrupt
        phases.append(train_phase(*args, **kwargs))
        return phases[-1]

    monkeypatch.setattr(pipeline, "train_phase", interrupted_after_one_phase)
    config = run_config(tmp_path, demo_dir, **LIGHT)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.undo()
    checkpoints, first = tmp_path / "checkpoints", tiny_run.models[0]
    base_written = (checkpoints / f"{first}_base.pt").stat().st_mtime_ns
    assert not (checkpoints / f"{tiny_run.models[1]}_base.pt").exists()

    with caplog.at_level(logging.INFO, logger="deepfake"):
        run(config)
    assert f"{first}: base checkpoint matches its recipe, skipping phase 1" in caplog.text
    assert (checkpoints / f"{first}_base.pt").stat().st_mtime_ns == base_written
    for name in tiny_run.models:
        resumed = read_checkpoint(checkpoints / f"{name}_final.pt")["state_dict"]
        uninterrupted = read_checkpoint(Path(tiny_run.checkpoint_dir) / f"{name}_final.pt")["state_dict"]
        assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted), name

    crafter = load_results(results_path(checkpoints))["adversarial_samples"]["crafted_by"]
    other = next(name for name in tiny_run.models if name != crafter)
    written = {path.name: path.stat().st_mtime_ns for path in checkpoints.glob("*.pt")}
    run(run_config(tmp_path, demo_dir, **LIGHT, **{f"{other}.finetune_lr": 3e-4}))
    rewritten = {path.name for path in checkpoints.glob("*.pt") if path.stat().st_mtime_ns != written[path.name]}
    assert rewritten == {f"{other}_final.pt"}, "its phase 2's recipe changed; nothing else did"
    written = {name: (checkpoints / f"{name}_final.pt").stat().st_mtime_ns for name in (crafter, other)}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deepfake"):
        run(run_config(tmp_path, demo_dir, models=(crafter,), **LIGHT))
        run(run_config(tmp_path, demo_dir, models=(other,), **LIGHT))
    assert f"{crafter}: final checkpoint matches its recipe and the adversarial pool, skipping phase 2" in caplog.text
    assert (checkpoints / f"{crafter}_final.pt").stat().st_mtime_ns == written[crafter]
    assert f"{other}: final checkpoint matches" not in caplog.text, "its own pool, crafted by itself: retrained"
    retrained = read_checkpoint(checkpoints / f"{other}_final.pt")["state_dict"]
    full = read_checkpoint(Path(tiny_run.checkpoint_dir) / f"{other}_final.pt")["state_dict"]
    assert not all(torch.equal(retrained[key], full[key]) for key in full)
    assert set(load_results(results_path(checkpoints))["models"]) == set(tiny_run.models)

    run(run_config(tmp_path, demo_dir, models=(crafter,), **LIGHT), force=True)
    assert (checkpoints / f"{crafter}_final.pt").stat().st_mtime_ns != written[crafter]


def test_other_training_pixels_retrain_and_drop_the_old_splits_results_and_a_diverged_model_keeps_none(
        tmp_path, demo_dir, caplog):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    run(run_config(tmp_path, data, models=("efficientnet_b0",), **LIGHT))
    first, second = sorted((data / "train" / "real").glob("*.png"))[:2]
    first.write_bytes(second.read_bytes())  # same file names, other pixels: another split

    with caplog.at_level(logging.INFO, logger="deepfake"):
        run(run_config(tmp_path, data, models=("resnet_se",), **LIGHT))
    assert "efficientnet_b0 was trained on another split; its results are dropped" in caplog.text
    results = load_results(results_path(tmp_path / "checkpoints"))
    assert set(results["models"]) == {"resnet_se"}
    assert results["models"]["resnet_se"]["data_id"] == read_json(tmp_path / "checkpoints" / "split.json")["data_id"]

    with pytest.raises(NonFiniteLossError, match="no model finished base training"):
        run(run_config(tmp_path, data, models=("resnet_se",), lr=1e12))
    entry = load_results(results_path(tmp_path / "checkpoints"))["models"]["resnet_se"]
    assert "lower the learning rate" in entry["error"] and entry["checkpoints"] == {}
    assert entry["data_id"] == results["models"]["resnet_se"]["data_id"], "the failure is this split's"


@pytest.mark.parametrize("recorded,figures", [
    (("/runs/a/checkpoints", "/runs/a/visualizations"), "copy/visualizations"),
    (("checkpoints", "visualizations"), "copy/visualizations"),  # recorded from another working directory
    (("runs/a/checkpoints", "runs/a/figures/a"), "copy/figures/a"),
    (("checkpoints", "/srv/figures"), "/srv/figures"),  # absolute figures, relative checkpoints: kept as given
])
def test_a_copied_run_keeps_its_figures_folder_beside_it(tmp_path, recorded, figures):
    copy = tmp_path / "copy" / "checkpoints"
    config = make_config("tiny", checkpoint_dir=recorded[0], viz_dir=recorded[1])
    write_json(results_path(copy), {"config": config.to_dict()})
    loaded = load_run_config(copy)
    assert loaded.checkpoint_dir == str(copy) and loaded.viz_dir == str(tmp_path / figures)


def test_a_model_trains_the_same_whatever_ran_before_it(tiny_run, tmp_path, demo_dir):
    """Each phase starts from the run's seed, so training one model alone (or resuming) rebuilds what a full run did."""
    assert tiny_run.models.index("resnet_se") > 0, "the full run must train another model before ResNet-SE"
    run(run_config(tmp_path, demo_dir, models=("resnet_se",), **LIGHT))
    alone = read_checkpoint(tmp_path / "checkpoints" / "resnet_se_base.pt")["state_dict"]
    after_others = read_checkpoint(Path(tiny_run.checkpoint_dir) / "resnet_se_base.pt")["state_dict"]
    assert alone.keys() == after_others.keys()
    assert all(torch.equal(alone[key], after_others[key]) for key in alone)


def test_a_pretrained_timm_member_trains_evaluates_and_joins_the_ensemble(tmp_path, demo_dir):
    """Any timm architecture by name: ImageNet weights from --weights-dir, up-scaled input, its own short
    schedule with a gentler backbone, both phases, evaluation and the submission."""
    import timm
    from safetensors.torch import save_file

    from deepfake.submission import run_ensemble

    weights = tmp_path / "weights"
    weights.mkdir()
    save_file(timm.create_model("test_efficientnet").state_dict(), weights / "test_efficientnet.safetensors")
    config = run_config(tmp_path, demo_dir, models=("resnet_se", "test_efficientnet"), pretrained=True,
                        require_pretrained=True, weights_dir=str(weights), input_size=48, pretrained_epochs=2)
    results = run(config)
    entry = results["models"]["test_efficientnet"]
    assert entry["pretrained"] is True and results["models"]["resnet_se"]["pretrained"] is False
    assert len(entry["history"]["base"]) == 2 and len(results["models"]["resnet_se"]["history"]["base"]) == 1
    final = load_checkpoint(Path(config.checkpoint_dir) / "test_efficientnet_final.pt")
    assert final.input_size == 48 and final.pretrained_loaded
    assert load_checkpoint(Path(config.checkpoint_dir) / "resnet_se_final.pt").input_size == 32
    assert entry["evaluation"]["final"]["attacks"] and entry["evaluation"]["gradcam"]["layer"]
    assert set(results["frontier"]["members"]) == {"resnet_se", "test_efficientnet"}
    meta = run_ensemble(config.checkpoint_dir, output=tmp_path / "submission.json", scheme="accuracy", device="cpu")
    assert {m["name"] for m in meta["members"]} == {"resnet_se", "test_efficientnet"}


def test_a_run_that_requires_pretrained_weights_stops_before_training_when_they_are_missing(tmp_path, demo_dir):
    from deepfake.errors import ConfigError

    config = run_config(tmp_path, demo_dir, models=("resnet_se", "test_efficientnet"), pretrained=True,
                        require_pretrained=True, weights_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="test_efficientnet.safetensors in a folder passed as --weights-dir"):
        run(config)
    assert not Path(config.checkpoint_dir).exists()
