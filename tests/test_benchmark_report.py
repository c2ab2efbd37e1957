"""benchmarks/benchmark.py: what it reports beside the scores (rescoring keeps the training time; a missing
independent attack library is said, not left as silent n/a columns)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_training_seconds_come_only_from_a_report_of_the_same_run(benchmark, tmp_path):
    checkpoints, report = tmp_path / "checkpoints", tmp_path / "results_full.json"
    checkpoints.mkdir()
    timings = {"base:resnet_se": 199.1, "evaluate": 161.0}
    (checkpoints / "results.json").write_text(json.dumps({"timings": timings}))
    assert benchmark.recorded_training_seconds(report, checkpoints) == {}  # no report yet
    stage_seconds = {"deepfake_detection.py": 913.9, "ensemble.py": 8.9}
    report.write_text(json.dumps({"stage_seconds": stage_seconds, "run": {"timings": timings}}))
    assert benchmark.recorded_training_seconds(report, checkpoints) == {"deepfake_detection.py": 913.9}
    report.write_text(json.dumps({"stage_seconds": stage_seconds, "run": {"timings": {**timings, "evaluate": 1.0}}}))
    assert benchmark.recorded_training_seconds(report, checkpoints) == {}  # a report of another run


def test_missing_apgd_note_names_the_install_and_the_rescore(benchmark, monkeypatch):
    monkeypatch.setattr(benchmark.importlib.util, "find_spec", lambda name: None)
    note = benchmark.missing_apgd_note()
    assert "pip install --no-deps torchattacks" in note and "--skip-training" in note
    monkeypatch.setattr(benchmark.importlib.util, "find_spec", lambda name: object())
    assert benchmark.missing_apgd_note() is None
