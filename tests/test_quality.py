"""FID/IS/KID, the FID Inception-v3, evaluation, the EMA generator and sample export."""

import functools
import json
import os
import re
import subprocess
import sys
import urllib.request

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from dcgan_jax import checkpointing, evaluate, inception, metrics, models, sampling, steps, train
from dcgan_jax.state import create_state
from dcgan_jax.validation import UserError
from tests import commands
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- statistics -------------------------------------------------------------------------


def _pytorch_fid_formula(mu1, sigma1, mu2, sigma2):
    """The computation of pytorch-fid / TTUR: scipy's sqrtm of the product, real part."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real)


def test_frechet_distance_matches_scipy_and_is_zero_for_identical_sets():
    rng = np.random.default_rng()
    for _ in range(3):
        a = rng.standard_normal((600, 48))
        b = rng.standard_normal((500, 48)) @ rng.standard_normal((48, 48)) * 0.4 + 0.3
        sa, sb = metrics.feature_statistics(a), metrics.feature_statistics(b)
        ours = metrics.frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])
        theirs = _pytorch_fid_formula(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])
        assert abs(ours - theirs) <= 1e-9 * theirs
        assert metrics.frechet_distance(sa["mu"], sa["sigma"], sa["mu"], sa["sigma"]) < 1e-9
    # Shifting every feature by c adds ||c||^2 and nothing else.
    shifted = metrics.feature_statistics(a + 2.0)
    fd = metrics.frechet_distance(sa["mu"], sa["sigma"], shifted["mu"], shifted["sigma"])
    assert abs(fd - 4.0 * 48) < 1e-6


def test_frechet_distance_of_fewer_features_than_dimensions_is_the_exact_value(seed):
    """With n - 1 < d features the trace term comes from an (n - 1) x (n - 1) matrix (the
    evaluation's path at small sample counts): the same value, to float64 rounding, as the
    nuclear norm of C S^(1/2) (C the centred features / sqrt(n - 1)), an independent route;
    frechet_distance of the statistics differs from it only by the square roots of its d -
    n + 1 eigenvalues that are zero but for rounding (each below sqrt(d eps ||M||))."""
    rng = np.random.default_rng(seed)
    d = 48
    reference = metrics.feature_statistics(rng.standard_normal((600, d)) * 0.7 + 0.2)
    root = scipy.linalg.sqrtm(reference["sigma"]).real
    eps = np.finfo(np.float64).eps
    for n in (2, 20, d):
        features = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.4 + 0.3
        ours = metrics.frechet_distance_of_features(features, reference["mu"], reference["sigma"])
        stats = metrics.feature_statistics(features)
        centred = (features - stats["mu"]) / np.sqrt(n - 1)
        diff = stats["mu"] - reference["mu"]
        exact = (
            diff @ diff
            + np.trace(reference["sigma"])
            + np.trace(stats["sigma"])
            - 2 * np.linalg.svd(centred @ root, compute_uv=False).sum()
        )
        assert abs(ours - exact) <= 1e-10 * exact, n
        full = metrics.frechet_distance(
            stats["mu"], stats["sigma"], reference["mu"], reference["sigma"]
        )
        middle_norm = np.linalg.norm(root @ stats["sigma"] @ root, 2)
        assert abs(full - exact) <= 2 * (d - n + 1) * np.sqrt(d * eps * middle_norm), n
    with pytest.raises(ValueError, match=r"sigma \(48, 47\); expected \(48,\) and \(48, 48\)"):
        metrics.frechet_distance_of_features(features, reference["mu"], reference["sigma"][:, 1:])
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        metrics.frechet_distance_of_features(features[:1], reference["mu"], reference["sigma"])
    with pytest.raises(ValueError, match=r"must be \(n, d\), got shape \(48,\)"):
        metrics.frechet_distance_of_features(features[0], reference["mu"], reference["sigma"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.frechet_distance_of_features(features * np.nan, reference["mu"], reference["sigma"])
    # As many features as dimensions or more: exactly frechet_distance of their statistics.
    features = rng.standard_normal((d + 1, d))
    stats = metrics.feature_statistics(features)
    assert metrics.frechet_distance_of_features(
        features, reference["mu"], reference["sigma"]
    ) == metrics.frechet_distance(stats["mu"], stats["sigma"], reference["mu"], reference["sigma"])


def test_inception_score_extremes():
    # Confident and spread over 1008 classes: the score is the number of classes per split.
    confident = np.full((1008 * 10, 1008), -50.0)
    confident[np.arange(1008 * 10), np.tile(np.arange(1008), 10)] = 50.0
    mean, std = metrics.inception_score(confident, num_splits=10)
    assert abs(mean - 1008) < 1e-6 * 1008 and std < 1e-6
    # The same prediction for every image: no information, score 1.
    same = np.tile(np.random.default_rng(0).standard_normal(1008), (500, 1))
    assert abs(metrics.inception_score(same)[0] - 1.0) < 1e-9


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((800, 32)), rng.standard_normal((800, 32))
    same, _ = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=400)
    other, _ = metrics.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=400)
    assert abs(same) < 0.01 and other > 0.1


# --- the network ------------------------------------------------------------------------

# Shapes of pytorch-fid's FIDInceptionV3 state dict (PyTorch layout), one or two per block.
KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def test_fid_inception_has_the_reference_parameter_count_and_layout():
    variables = inception.random_variables()
    # torchvision's Inception-v3 without the auxiliary head (23,834,568) with a 1008-way fc.
    assert models.count_params(variables["params"]) == inception.NUM_PARAMETERS == 23_850_960
    state_dict = inception.state_dict_from_variables(variables)
    assert len(state_dict) == 94 * 5 + 2  # 94 conv+BN layers (w, BN w/b/mean/var) + fc
    for name, shape in KNOWN_SHAPES.items():
        assert state_dict[name].shape == shape, name


def test_fid_inception_asks_for_full_float32_products_on_every_backend():
    variables = inception.random_variables()
    images = jnp.zeros((1, 32, 32, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(inception.FIDInceptionV3().apply)(variables, images)
    products = [
        e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("conv_general_dilated", "dot_general")
    ]
    # 94 convolutions, the classifier and its logits without bias (the Inception Score's)
    assert len(products) == 96
    highest = jax.lax.Precision.HIGHEST
    assert all(e.params["precision"] in (highest, (highest, highest)) for e in products)


def test_weight_file_loads_without_torch_by_name(tmp_path):
    torch = pytest.importorskip("torch")
    state_dict = inception.state_dict_from_variables(inception.random_variables(seed=3))
    tensors = {name: torch.from_numpy(value.copy()) for name, value in state_dict.items()}
    tensors["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)  # torchvision has these
    path = tmp_path / inception.FID_WEIGHTS_NAME
    torch.save(tensors, path)
    read = inception.read_torch_state_dict(str(path))
    for name, value in state_dict.items():
        np.testing.assert_array_equal(read[name], value)
    variables = inception.variables_from_state_dict(read)
    assert models.count_params(variables["params"]) == inception.NUM_PARAMETERS

    del tensors["Mixed_7c.branch_pool.conv.weight"]
    torch.save(tensors, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not have the FID Inception-v3 layout"):
        inception.variables_from_state_dict(
            inception.read_torch_state_dict(str(tmp_path / "wrong.pth"))
        )


def test_resize_matches_pytorch_bilinear():
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(inception.resize_for_inception(images))
    theirs = (
        torch.nn.functional.interpolate(
            torch.from_numpy(images).permute(0, 3, 1, 2),
            size=(299, 299),
            mode="bilinear",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


def _keras_index(name: str) -> int:
    match = re.search(r"_(\d+)$", name)
    return int(match.group(1)) if match else 0


def test_features_agree_with_keras_inception_v3():
    """An independent implementation: Keras' InceptionV3, given the same random weights.

    Keras' network is the FID graph except for two details: its BatchNorm has no scale
    (so the scales are set to 1 here) and the last block (Mixed_7c) pools its pool branch
    with an average instead of a max. Mixed_7b's output (mixed9) is compared directly; the
    last block is compared in its Keras (average-pool) form on the same input.
    """
    tf = pytest.importorskip("tensorflow")
    keras_model = tf.keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(299, 299, 3)
    )
    convs = sorted(
        (layer for layer in keras_model.layers if isinstance(layer, tf.keras.layers.Conv2D)),
        key=lambda layer: _keras_index(layer.name),
    )
    norms = {
        _keras_index(layer.name): layer
        for layer in keras_model.layers
        if isinstance(layer, tf.keras.layers.BatchNormalization)
    }
    variables = inception.random_variables(seed=1)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: np.ones_like(x) if path[-1].key == "scale" else x, variables
    )
    # Keras creates its layers in the order torchvision (and our modules) call them.
    call_order = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, inception.BasicConv) and context.method_name == "__call__":
            call_order.append(context.module.path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(
            inception.FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3))
        )
    assert len(call_order) == len(convs) == 94
    for conv, path in zip(convs, call_order, strict=True):
        params, stats = variables["params"], variables["batch_stats"]
        for key in path:
            params, stats = params[key], stats[key]
        conv.kernel.assign(params["conv"]["kernel"])
        norm = norms[_keras_index(conv.name)]
        norm.beta.assign(params["bn"]["bias"])
        norm.moving_mean.assign(stats["bn"]["mean"])
        norm.moving_variance.assign(stats["bn"]["var"])

    images = np.random.default_rng(2).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    keras_outputs = tf.keras.Model(
        keras_model.input, [keras_model.get_layer(n).output for n in ("mixed9", "mixed10")]
    )(images, training=False)
    keras_mixed9, keras_mixed10 = (np.asarray(x) for x in keras_outputs)
    _, state = jax.jit(
        lambda v, x: inception.FIDInceptionV3().apply(v, x, capture_intermediates=True)
    )(variables, images)
    ours_mixed9 = np.asarray(state["intermediates"]["Mixed_7b"]["__call__"][0])
    scale = np.abs(keras_mixed9).max()
    assert np.abs(ours_mixed9 - keras_mixed9).max() <= 1e-5 * scale

    last = {
        "params": variables["params"]["Mixed_7c"],
        "batch_stats": variables["batch_stats"]["Mixed_7c"],
    }
    ours_mixed10 = inception.InceptionE(max_pool_branch=False).apply(last, keras_mixed9)
    assert (
        np.abs(np.asarray(ours_mixed10) - keras_mixed10).max() <= 1e-5 * np.abs(keras_mixed10).max()
    )


# --- evaluation -------------------------------------------------------------------------


def _no_network(monkeypatch):
    def urlopen(*args, **kwargs):
        raise urllib.error.URLError("no route to host (offline)")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_evaluation_without_weights_offline_names_the_file(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.setattr(evaluate, "CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError) as error:
        evaluate.fid_weights_path("")
    message = str(error.value)
    assert inception.FID_WEIGHTS_NAME in message and inception.FID_WEIGHTS_URL in message
    assert str(tmp_path / "cache") in message and "--config.fid_weights" in message


def test_training_goes_on_without_fid_weights(tmp_path, monkeypatch, capsys):
    _no_network(monkeypatch)
    monkeypatch.setattr(evaluate, "CACHE_DIR", str(tmp_path / "cache"))
    config = tiny_config(eval_every_steps=2, eval_features="inception")
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == 4
    assert "warning: evaluation is off for this run" in capsys.readouterr().out


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    """Random weights in pytorch-fid's file layout (the real file cannot be downloaded here)."""
    torch = pytest.importorskip("torch")
    state_dict = inception.state_dict_from_variables(inception.random_variables(seed=5))
    path = tmp_path_factory.mktemp("weights") / inception.FID_WEIGHTS_NAME
    torch.save({k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}, path)
    return str(path)


@pytest.mark.slow
@pytest.mark.optimized
def test_evaluate_cli_and_in_training_evaluation(tmp_path, weight_file, capsys):
    stats_dir = tmp_path / "stats"
    config = tiny_config(
        num_train_steps=4,
        eval_every_steps=2,
        eval_num_samples=20,
        fid_reference_samples=20,
        fid_weights=weight_file,
        fid_stats_dir=str(stats_dir),
        eval_features="inception",
    )
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    output = capsys.readouterr().out
    assert re.search(r"step 2: FID [\d.]+ \| Inception Score [\d.]+", output)
    assert sorted(os.listdir(workdir / "eval")) == ["step_000002.json", "step_000004.json"]
    results = [
        json.loads((workdir / "eval" / n).read_text()) for n in sorted(os.listdir(workdir / "eval"))
    ]
    best = min(results, key=lambda r: r["fid"])
    assert json.loads((workdir / "best_fid" / "best.json").read_text())["step"] == best["step"]
    # best_fid is a workdir of its own: the best state, loadable like any checkpoint.
    _, best_state = checkpointing.load_checkpoint(str(workdir / "best_fid"))
    assert int(best_state.step) == best["step"]
    (cached,) = os.listdir(stats_dir)
    with np.load(stats_dir / cached) as stats:
        assert int(stats["n"]) == 20 and stats["sigma"].shape == (2048, 2048)

    # The CLI gives the same numbers for step 4 (same seed, same cached reference), and with
    # the reference cached it needs no TensorFlow: importing it fails in this process.
    result = subprocess.run(
        commands.without_tensorflow(
            "dcgan_jax.evaluate",
            "--workdir",
            str(workdir),
            "--num_samples",
            "20",
            "--fid_weights",
            weight_file,
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    again = json.loads((workdir / "eval" / "step_000004.json").read_text())
    during = next(r for r in results if r["step"] == 4)
    for key in ("fid", "inception_score", "kid"):
        assert again[key] == pytest.approx(during[key], rel=1e-5), key
    assert f"step 4: FID {again['fid']:.2f}" in result.stdout
    # The Inception Score's convention is recorded: 10 splits of pool3 @ W (no fc bias);
    # two images per split, so that the score is not 1 by construction.
    assert during["inception_score"] > 1.0
    assert again["inception_score_splits"] == during["inception_score_splits"] == 10
    assert again["inception_score_logits"] == during["inception_score_logits"] == "unbiased"
    assert "10 splits, unbiased logits" in result.stdout
    assert "published FIDs use 50,000" in result.stdout  # 20 samples are not comparable

    # The cached reference statistics are keyed by the feature network's fingerprint.
    assert evaluate.load_features(weight_file).fingerprint in cached


def test_biased_score_logits_are_the_unbiased_ones_plus_the_fc_bias(weight_file):
    """ "biased" takes the fc layer's output: the same pool3, logits larger by the fc bias;
    the features themselves (and so the reference statistics) do not change."""
    unbiased = evaluate.load_features(weight_file)
    biased = evaluate.load_features(weight_file, score_logits="biased")
    assert unbiased.fingerprint == biased.fingerprint
    images = np.random.default_rng(3).uniform(-1, 1, (4, 16, 16, 1)).astype(np.float32)
    (pool_u, logits_u), (pool_b, logits_b) = unbiased(images), biased(images)
    np.testing.assert_array_equal(pool_u, pool_b)
    bias = inception.random_variables(seed=5)["params"]["fc"]["bias"]
    assert np.abs(bias).max() > 0
    np.testing.assert_allclose(
        logits_b - logits_u,
        np.broadcast_to(bias, logits_b.shape),
        atol=1e-5 * np.abs(logits_b).max(),
    )


def test_reference_statistics_are_keyed_by_the_feature_network(tmp_path):
    """Changing the weight file (its digest) or the precision must not reuse statistics."""
    config = tiny_config()
    paths = {
        evaluate.reference_cache_path(config, str(tmp_path), 100, features_id)
        for features_id in ("0123abcd-HIGHEST", "4567ef01-HIGHEST", "0123abcd-DEFAULT")
    }
    assert len(paths) == 3
    assert evaluate.reference_cache_path(config, str(tmp_path), 100, "0123abcd-HIGHEST") in paths


class _MeanFeatures:
    """A stand-in feature network: 3 features per image, counting the images it sees."""

    fingerprint = "stand-in"

    def __init__(self):
        self.images_seen = 0

    def of_batches(self, batches):
        axes = (1, 2, 3)
        per_batch = [np.stack([b.mean(axes), b.std(axes), b.max(axes)], 1) for b in batches]
        pool3 = np.concatenate(per_batch)
        self.images_seen += len(pool3)
        return pool3, None


def test_reference_statistics_are_cached_and_found_without_opening_the_data(tmp_path, monkeypatch):
    from PIL import Image

    from dcgan_jax import input_pipeline

    folder = tmp_path / "images"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    digits_split = input_pipeline.source_images(tiny_config(), 0, 1).num_examples
    cases = [  # (dataset, requested, images in the statistics)
        ("digits", 30, 30),
        ("digits", digits_split + 1000, digits_split),  # a split smaller than asked
        (f"folder:{folder}", 50, 12),
    ]
    stats_dir, configs = str(tmp_path / "stats"), []
    for dataset, requested, expected_n in cases:
        config = tiny_config(
            dataset=dataset, fid_reference_samples=requested, fid_stats_dir=stats_dir
        )
        features = _MeanFeatures()
        stats = evaluate.reference_statistics(config, features)
        assert int(stats["n"]) == expected_n == features.images_seen
        assert os.path.isfile(
            evaluate.reference_cache_path(config, stats_dir, requested, "stand-in")
        )
        configs.append((config, stats))

    # Cached, the statistics are found without opening the data (so evaluating a checkpoint
    # needs no TensorFlow; the evaluate CLI test checks that in a process without it).
    def no_data(*args, **kwargs):
        raise AssertionError("the data was opened")

    monkeypatch.setattr(input_pipeline, "source_images", no_data)
    for config, stats in configs:
        features = _MeanFeatures()
        again = evaluate.reference_statistics(config, features)
        assert features.images_seen == 0
        np.testing.assert_array_equal(again["sigma"], stats["sigma"])
    # A folder whose files change is other data: not found in the cache.
    Image.fromarray(pixels[0]).save(folder / "new.png")
    with pytest.raises(AssertionError, match="the data was opened"):
        evaluate.reference_statistics(configs[-1][0], _MeanFeatures())


# --- EMA --------------------------------------------------------------------------------


def _tree_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


def test_ema_follows_its_recurrence_and_sampling_uses_it_only_when_on():
    from dcgan_jax import models

    real = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 1)).astype(np.float32)
    config = tiny_config(ema_decay=0.9)
    state = create_state(config, *models.make_models(config))
    # Without warm-up the decay is ema_decay; with it, min(decay, (1 + t) / (10 + t)) after
    # t completed steps: 0.1 for the first update.
    for warmup, d in ((False, np.float32(0.9)), (True, np.float32(0.1))):
        step = functools.partial(steps.train_step, update_ema=True, ema_warmup=warmup)
        new, _ = jax.jit(step)(state, real)
        expected = jax.tree_util.tree_map(
            lambda p0, p1, d=d: p1 + d * (p0 - p1), state.generator.params, new.generator.params
        )
        leaves = (jax.tree_util.tree_leaves(t) for t in (new.ema_params, expected))
        for got, want in zip(*leaves, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-9)
    assert float(steps.ema_decay_at(0.999, 990, True)) == pytest.approx(0.991, abs=1e-6)
    assert float(steps.ema_decay_at(0.999, 20_000, True)) == pytest.approx(0.999)
    assert not _tree_equal(new.ema_params, new.generator.params)
    assert _tree_equal(new.sampling_generator().params, new.ema_params)

    # A resumed run may change the decay (the average is kept) or switch the EMA off
    # (sampling uses the weights); switching it on starts it from the current weights.
    assert _tree_equal(new.with_ema_decay(0.5).ema_params, new.ema_params)
    off = new.with_ema_decay(0.0)
    assert _tree_equal(off.sampling_generator().params, off.generator.params)
    on_again = off.with_ema_decay(0.5)
    assert on_again.keeps_ema and _tree_equal(on_again.ema_params, off.generator.params)


@pytest.mark.parametrize("decay", [0.0, 0.99])
def test_resume_is_exact_with_ema_on_and_off(tmp_path, decay):
    config = lambda steps: tiny_config(num_train_steps=steps, ema_decay=decay)
    straight = train.train_and_evaluate(config(4), str(tmp_path / "straight"))
    train.train_and_evaluate(config(2), str(tmp_path / "resumed"))
    resumed = train.train_and_evaluate(config(4), str(tmp_path / "resumed"))
    assert checkpointing.state_digest(resumed) == checkpointing.state_digest(straight)
    assert float(resumed.ema_decay) == pytest.approx(decay)


# --- export -----------------------------------------------------------------------------


def _sample_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "dcgan_jax.sample", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=300,
    )


@pytest.mark.slow
def test_export_writes_the_requested_count_and_format(tmp_path):
    from PIL import Image

    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(num_train_steps=2), str(workdir))
    for fmt, out in (("npz", "gen.npz"), ("png", "pngs")):
        args = ["--num", "23", "--format", fmt, "--batch_size", "5", "--out", str(tmp_path / out)]
        result = _sample_cli("--workdir", str(workdir), *args)
        assert result.returncode == 0, result.stderr[-2000:]
    with np.load(tmp_path / "gen.npz") as archive:
        images = archive["images"]
    assert images.shape == (23, 16, 16, 1) and images.dtype == np.uint8
    names = sorted(os.listdir(tmp_path / "pngs"))
    assert len(names) == 23 and names[0] == "000000.png" and names[-1] == "000022.png"
    # Same seed, same batches: the PNGs hold the npz's images.
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "pngs" / names[7])), images[7, ..., 0]
    )

    for out in ("walk.png", "walk.gif"):
        result = _sample_cli(
            "--workdir",
            str(workdir),
            "--interpolate",
            "3",
            "--steps",
            "5",
            "--out",
            str(tmp_path / out),
        )
        assert result.returncode == 0, result.stderr[-2000:]
    # 3 walks of 5 images of 16 px with 2 px borders (92 x 56), enlarged 6x to >= 512 px.
    assert Image.open(tmp_path / "walk.png").size == (6 * (5 * 18 + 2), 6 * (3 * 18 + 2))
    assert Image.open(tmp_path / "walk.gif").n_frames == 5 + 3  # forth and back


def test_small_grids_are_enlarged_by_whole_factors_and_wide_ones_kept():
    grid = np.arange(146 * 100 * 1, dtype=np.uint8).reshape(100, 146, 1)
    big = sampling.enlarge(grid)
    assert big.shape == (400, 584, 1)  # x4: the smallest whole factor reaching 512 px
    np.testing.assert_array_equal(big[::4, ::4], grid)  # nearest neighbour: exact blocks
    np.testing.assert_array_equal(big[3::4, 3::4], grid)
    wide = np.zeros((10, 600, 3), np.uint8)
    assert sampling.enlarge(wide) is wide


def test_generated_images_are_measured_as_the_8_bit_images_export_writes():
    config = tiny_config()
    g, d = models.make_models(config)
    state = create_state(config, g, d)
    seen = []

    class RecordingFeatures:
        def of_batches(self, batches):
            images = np.concatenate(list(batches))
            seen.append(images)
            rng = np.random.default_rng(0)
            return rng.standard_normal((len(images), 4)), rng.standard_normal((len(images), 6))

    pool = np.random.default_rng(1).standard_normal((20, 4))
    reference = {**metrics.feature_statistics(pool), "kid_features": pool, "n": 20}
    evaluate.evaluate_generator(
        state.generator, config.z_dim, RecordingFeatures(), reference, 12, batch_size=5
    )
    (images,) = seen
    levels = (images.astype(np.float64) + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # on the uint8 grid
    raw = np.concatenate(list(sampling.generated_batches(state.generator, config.z_dim, 12, 5, 0)))
    np.testing.assert_array_equal(sampling.to_uint8(raw), sampling.to_uint8(images))


def test_reference_images_are_a_seeded_uniform_subset_not_the_first_ones():
    import tensorflow as tf

    images = tf.data.Dataset.range(1000)
    picked = list(evaluate.reference_subset(images, 1000, 100).as_numpy_iterator())
    again = list(evaluate.reference_subset(images, 1000, 100).as_numpy_iterator())
    assert picked == again and len(set(picked)) == 100  # seeded, without replacement
    assert picked == sorted(picked) and picked[-1] > 500  # spread over the split
    assert 350 < np.mean(picked) < 650
    everything = evaluate.reference_subset(images, 1000, 5000)
    assert list(everything.as_numpy_iterator()) == list(range(1000))


def test_sampling_with_batch_statistics_is_training_mode_without_side_effects():
    config = tiny_config()
    state = create_state(config, *models.make_models(config))
    g = state.generator
    z = jax.random.normal(jax.random.PRNGKey(0), (6, config.z_dim))
    before = jax.device_get(g.batch_stats)
    batch = sampling.generate_eval(g, z, batch_statistics=True)
    expected = g.apply_fn(
        {"params": g.params, "batch_stats": g.batch_stats}, z, train=True, mutable=["batch_stats"]
    )[0]
    # Jitted vs op by op: the same function up to float32 rounding.
    np.testing.assert_allclose(np.asarray(batch), np.asarray(expected), rtol=1e-5, atol=1e-6)
    running = sampling.generate_eval(g, z)
    assert not np.allclose(np.asarray(batch), np.asarray(running))
    assert _tree_equal(before, g.batch_stats)
    assert not sampling.batch_statistics(config)
    assert sampling.batch_statistics(tiny_config(sample_batchnorm="batch"))
    # Configs and checkpoints from before the field sample as they did: running averages.
    legacy = tiny_config()
    del legacy["sample_batchnorm"]
    assert not sampling.batch_statistics(legacy)


def test_standing_statistics_average_each_layers_batch_statistics():
    config = tiny_config(batch_size=6)
    state = create_state(config, *models.make_models(config))
    g = state.generator
    stats = sampling.standing_statistics(g, config.z_dim, 6, num_batches=2, seed=3)
    key = jax.random.PRNGKey(3)
    inputs = []
    for b in range(2):
        z = jax.random.normal(jax.random.fold_in(key, b), (6, config.z_dim))
        _, captured = g.apply_fn(
            {"params": g.params, "batch_stats": g.batch_stats},
            z,
            train=True,
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda module, method: module.name == "Dense4x4_0",
        )
        (out,) = captured["intermediates"]["Dense4x4_0"]["__call__"]
        inputs.append(np.asarray(out, np.float64).reshape(-1, out.shape[-1]))
    first = stats["BatchNorm_0"]
    np.testing.assert_allclose(first["mean"], np.mean([x.mean(0) for x in inputs], 0), rtol=1e-4)
    unbiased = np.mean([x.var(0, ddof=1) for x in inputs], 0)
    np.testing.assert_allclose(first["var"], unbiased, rtol=1e-4)
    assert int(first["num_batches_tracked"]) == int(
        g.batch_stats["BatchNorm_0"]["num_batches_tracked"]
    )
    # Sampling uses them for the EMA generator only.
    ema_state = state.with_ema_decay(0.9)
    assert _tree_equal(sampling.sampling_generator(state, config).batch_stats, g.batch_stats)
    assert not _tree_equal(
        sampling.sampling_generator(ema_state, config).batch_stats, g.batch_stats
    )


def test_sampling_in_training_mode_works_for_the_pmap_built_generator():
    # train.init_state builds modules that synchronise BatchNorm over the pmap axis.
    config = tiny_config(ema_decay=0.9, sample_batchnorm="batch")
    state = train.init_state(config)
    generator = sampling.sampling_generator(state, config)  # standing statistics
    images = sampling.generate_eval(generator, state.fixed_noise[:4], batch_statistics=True)
    assert images.shape == (4, 16, 16, 1) and np.isfinite(np.asarray(images)).all()
