"""The digits feature network (FDD, digits IS) and the whole-run comparison with PyTorch."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax import compare, digits_features, evaluate, train
from tests.conftest import optimized_compilation, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("digits_cache"))


@pytest.fixture(scope="module")
def evaluation(cache_dir):
    """Trains the classifier once for the module (a few seconds) and caches it."""
    with optimized_compilation():
        return digits_features.DigitsEvaluation(tiny_config(), cache_dir)


def test_classifier_is_accurate_on_held_out_digits_and_cached(evaluation, cache_dir):
    assert evaluation.trained_now
    assert evaluation.held_out_accuracy >= 0.97
    # The two halves are disjoint and together are all 1,797 digits.
    assert len(evaluation.train_images) + len(evaluation.held_out_images) == 1797
    again = digits_features.DigitsEvaluation(tiny_config(), cache_dir)
    assert not again.trained_now
    for a, b in zip(
        jax.tree_util.tree_leaves(again.features.params),
        jax.tree_util.tree_leaves(evaluation.features.params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_classifier_training_is_deterministic_from_its_seed(monkeypatch, evaluation):
    monkeypatch.setattr(digits_features, "_EPOCHS", 2)
    images, labels = evaluation.train_images[:256], evaluation.train_labels[:256]
    first = digits_features.train_classifier(images, labels, seed=3)
    second = digits_features.train_classifier(images, labels, seed=3)
    other = digits_features.train_classifier(images, labels, seed=4)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    for a, b in zip(leaves(first), leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(first), leaves(other), strict=True))


def _blur(images, passes):
    for _ in range(passes):
        padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        images = (
            sum(
                padded[:, i : i + images.shape[1], j : j + images.shape[2]]
                for i in range(3)
                for j in range(3)
            )
            / 9.0
        )
    return images


def test_fdd_is_zero_for_identical_sets_and_grows_with_corruption(evaluation):
    reference_fdd = evaluation.fdd_and_is(evaluation.train_images)["fdd"]
    assert reference_fdd == pytest.approx(0.0, abs=1e-6)
    clean = evaluation.held_out_images
    rng = np.random.default_rng(0)
    fdd = lambda images: evaluation.fdd_and_is(images.astype(np.float32))["fdd"]
    noisy = [
        fdd(np.clip(clean + s * rng.standard_normal(clean.shape), -1, 1)) for s in (0.2, 0.5, 1.0)
    ]
    blurred = [fdd(_blur(clean, passes)) for passes in (1, 3)]
    shuffled = fdd(rng.permuted(clean.reshape(len(clean), -1), axis=1).reshape(clean.shape))
    floor = fdd(clean)
    assert floor < noisy[0] < noisy[1] < noisy[2]
    assert floor < blurred[0] < blurred[1]
    assert shuffled > max(noisy[1], blurred[1])
    # The digits IS falls as the digits stop being recognisable.
    assert (
        evaluation.fdd_and_is(clean)["is"]
        > 8.0
        > evaluation.fdd_and_is(
            rng.permuted(clean.reshape(len(clean), -1), axis=1).reshape(clean.shape)
        )["is"]
    )


def test_permutation_test_is_exact_for_small_samples():
    separated = compare.permutation_test([1, 2, 3, 4, 5], [11, 12, 13, 14, 15])
    assert separated == pytest.approx(2 / 252)  # only the observed split and its mirror
    assert compare.permutation_test([1, 2, 3], [1, 2, 3]) == 1.0
    row = compare.final_comparison([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert row["difference_in_pooled_sd"] == pytest.approx(-1.0)


def test_data_order_is_a_permutation_each_epoch():
    batches = compare.batch_indices(10, 3, seed=0)
    epoch = np.concatenate([next(batches) for _ in range(3)])  # 9 of 10, remainder dropped
    assert len(set(epoch)) == 9
    again = compare.batch_indices(10, 3, seed=0)
    np.testing.assert_array_equal(np.concatenate([next(again) for _ in range(3)]), epoch)


@pytest.mark.optimized
def test_compare_runs_both_frameworks_and_writes_json_and_plot(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(os.path, "expanduser", lambda p: p.replace("~", cache_dir))
    config = tiny_config(ema_decay=0.9)
    lines = []
    results = compare.run_compare(config, str(tmp_path), 1, 6, 3, 40, lines.append)
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["steps"] == [0, 3, 6]
    for framework in ("jax", "torch"):
        for key in ("fdd", "is", "batch_bn_fdd", "batch_bn_is"):
            assert np.asarray(saved[framework][key]).shape == (1, 3), (framework, key)
    for key in ("ema_fdd", "ema_batch_bn_fdd", "ema_standing_fdd"):
        assert np.asarray(saved["jax"][key]).shape == (1, 3), key  # the EMA: JAX only
    assert "ema_fdd" not in saved["torch"]
    assert saved["floor"]["fdd"] < saved["ceiling"]["fdd"]
    assert set(saved["final"]["fdd"]) >= {"jax_mean", "torch_mean", "p_value"}
    assert saved["num_samples"] == 40 and results["classifier_held_out_accuracy"] >= 0.97
    assert Image.open(tmp_path / "compare.png").size == (800, 520)
    assert any("seed 1/1 torch step      6/6" in line for line in lines)
    assert "PyTorch" in lines[-1] and "floor" in lines[-1]


# The classifier trained (optimized) by `evaluation`, found in `cache_dir`, not again here.
@pytest.mark.usefixtures("evaluation")
def test_compare_measures_one_framework_alone(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(os.path, "expanduser", lambda p: p.replace("~", cache_dir))
    lines = []
    compare.run_compare(tiny_config(), str(tmp_path), 1, 2, 2, 20, lines.append, ("jax",))
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert "torch" not in saved and saved["final"] == {}
    assert np.asarray(saved["jax"]["fdd"]).shape == (1, 2)
    assert "FDD, BatchNorm running averages" in lines[-1]
    with pytest.raises(compare.UserError, match="--frameworks"):
        compare.run_compare(tiny_config(), str(tmp_path), 1, 2, 2, 20, lines.append, ("tf",))


def test_compare_refuses_other_datasets_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcgan_jax.compare",
            "--config",
            os.path.join(REPO, "configs", "cifar.py"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=300,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "configs/digits.py" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.usefixtures("evaluation")  # as above
def test_training_evaluates_the_digits_with_fdd_offline(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "CACHE_DIR", cache_dir)
    config = tiny_config(num_train_steps=2, eval_every_steps=2, eval_num_samples=24)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    output = capsys.readouterr().out
    assert "step 2: FDD " in output and "digits-classifier-v1 features" in output
    results = json.loads((tmp_path / "run" / "eval" / "step_000002.json").read_text())
    assert results["distance"] == "FDD" and results["features"] == digits_features.NAME
    assert results["num_reference"] == 898
