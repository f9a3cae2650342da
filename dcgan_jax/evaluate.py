"""FID, Inception Score and KID of a trained generator.

    python -m dcgan_jax.evaluate --workdir runs/cifar [--num_samples 50000] [--step N]
        [--fid_weights pt_inception-2015-12-05-6726825d.pth]

Generated images (the EMA generator when the run has one) and the training split's images,
both at the model's resolution, go through the FID Inception-v3 (resized to 299x299) on the
accelerator. The training split's statistics are computed once and cached as an .npz
(mu, sigma, n and a subset of features for KID). Results are printed and written to
workdir/eval/step_<N>.json. Training runs the same every `eval_every_steps`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.request

import numpy as np
from absl import app, flags

from dcgan_jax import checkpointing, inception, metrics, report, sampling, xla_flags
from dcgan_jax.validation import (
    FOLDER_PREFIX,
    SCORE_LOGITS,
    UserError,
    describe_error,
    exit_on_user_error,
    list_image_files,
)

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "dcgan_jax")
KID_REFERENCE_FEATURES = 5_000  # reference features kept in the cache for KID
# As published (Salimans et al. 2016): 10 splits; of 5,000 images each at 50,000 samples.
INCEPTION_SCORE_SPLITS = 10


def fid_weights_path(configured: str, download: bool = True) -> str:
    """The FID Inception weight file: `configured` if given, else the cached copy, fetched
    once from pytorch-fid's release when the network allows. UserError when unavailable."""
    if configured:
        if not os.path.isfile(configured):
            raise UserError(
                f"--config.fid_weights={configured!r} is not a file. Fix: pass the path of "
                f"{inception.FID_WEIGHTS_NAME} (from {inception.FID_WEIGHTS_URL})."
            )
        return configured
    cached = os.path.join(CACHE_DIR, inception.FID_WEIGHTS_NAME)
    if os.path.isfile(cached):
        return cached
    problem = "downloading is off"
    if download:
        try:
            os.makedirs(CACHE_DIR, exist_ok=True)
            partial = f"{cached}.partial-{os.getpid()}"
            with urllib.request.urlopen(inception.FID_WEIGHTS_URL, timeout=60) as response:
                with open(partial, "wb") as f:
                    f.write(response.read())
            os.replace(partial, cached)  # a complete file or none
            return cached
        except OSError as e:  # URLError, timeouts and file errors are all OSErrors
            problem = describe_error(e)
    raise UserError(
        f"FID needs the Inception weights {inception.FID_WEIGHTS_NAME}, which are not in "
        f"{CACHE_DIR} and could not be downloaded ({problem}). Fix: download "
        f"{inception.FID_WEIGHTS_URL} where the internet is reachable and put it at {cached}, "
        "or pass --config.fid_weights=/path/to/it."
    )


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_features(
    weights: str = "", download: bool = True, score_logits: str = "unbiased"
) -> metrics.InceptionFeatures:
    """The Inception feature extractor with the FID weights; the Inception Score takes
    `score_logits` (see validation.SCORE_LOGITS)."""
    path = fid_weights_path(weights, download)
    try:
        variables = inception.variables_from_state_dict(inception.read_torch_state_dict(path))
        digest = _file_digest(path)
    except Exception as e:  # a wrong or damaged file fails in many ways
        raise UserError(
            f"{path} is not the FID Inception weight file ({describe_error(e)}). Fix: use "
            f"{inception.FID_WEIGHTS_NAME} from {inception.FID_WEIGHTS_URL}."
        ) from e
    return metrics.InceptionFeatures(variables, score_logits, digest)


def uses_digits_features(config) -> bool:
    """Whether evaluation scores with the digits classifier (FDD) rather than Inception."""
    choice = config.get("eval_features", "auto")
    return choice == "digits" or (choice == "auto" and config.dataset == "digits")


def features_and_reference(config, weights: str = ""):
    """The feature network evaluation uses for `config` and the real images' statistics it
    compares with: for the digits, the digits classifier (trained once, cached) and its
    training half (see digits_features; no download); otherwise the FID Inception and the
    training split's cached statistics. UserError when something needed is missing."""
    if uses_digits_features(config):
        from dcgan_jax import digits_features

        evaluation = digits_features.DigitsEvaluation(config, CACHE_DIR)
        return evaluation.features, evaluation.reference
    features = load_features(
        weights or config.fid_weights, score_logits=config.get("inception_score_logits", "unbiased")
    )
    return features, reference_statistics(config, features)


def reference_cache_path(config, cache_dir: str, requested: int, features_id: str) -> str:
    """Where the training split's statistics for this data configuration are cached, keyed
    by everything that changes them: the data, the subset (`requested` images, all of a
    smaller split) and the feature network (`features_id`: the weight file's digest and the
    precision)."""
    dataset = config.dataset
    if dataset.startswith(FOLDER_PREFIX):
        # Folders are identified by their absolute path and their list of files.
        folder = os.path.abspath(dataset[len(FOLDER_PREFIX) :])
        files = "\n".join(list_image_files(folder))
        digest = hashlib.sha256(f"{folder}\n{files}".encode()).hexdigest()[:16]
        dataset = f"folder-{os.path.basename(folder)}-{digest}"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", dataset)
    shape = f"{config.image_size}x{config.image_size}x{config.channels}"
    # "r": a seeded random subset of the split (earlier caches held its first images).
    features_id = re.sub(r"[^A-Za-z0-9_.-]", "_", features_id)
    return os.path.join(
        cache_dir, f"{name}_{shape}_crop{config.crop_size}_n{requested}r_{features_id}.npz"
    )


# The reference subset is drawn with this seed, independent of the run's, so that every
# run on a dataset is compared with the same real images.
REFERENCE_SUBSET_SEED = 0


def reference_subset(images, num_examples: int, count: int):
    """`count` images of the `images` dataset drawn uniformly without replacement (seeded),
    in file order. Taking the first images instead would, for a folder sorted by class,
    give a few classes only."""
    import tensorflow as tf

    if count >= num_examples:
        return images
    chosen = np.zeros(num_examples, bool)
    rng = np.random.default_rng(REFERENCE_SUBSET_SEED)
    chosen[rng.choice(num_examples, count, replace=False)] = True
    mask = tf.constant(chosen)
    return (
        images.enumerate()
        .filter(lambda index, image: tf.gather(mask, index))
        .map(lambda index, image: image)
    )


def reference_statistics(config, features: metrics.InceptionFeatures, batch_size: int = 200):
    """{"mu", "sigma", "n", "kid_features"} of `config.fid_reference_samples` images of the
    training split (a seeded random subset when the split is larger; see
    `reference_subset`), cached on disk."""
    # Keyed by the request, not by the count it gave (smaller where the split is smaller), so
    # that cached statistics are found before the data is opened: evaluating a checkpoint
    # then needs neither the data nor TensorFlow (a few seconds of import).
    cache_dir = config.fid_stats_dir or os.path.join(CACHE_DIR, "fid_stats")
    path = reference_cache_path(
        config, cache_dir, config.fid_reference_samples, features.fingerprint
    )
    if os.path.isfile(path):
        with np.load(path) as cached:
            return {key: cached[key] for key in cached.files}
    from dcgan_jax import input_pipeline

    source = input_pipeline.source_images(config, 0, 1)
    images, num_examples = source.images, source.num_examples
    count = min(num_examples, config.fid_reference_samples)
    images = reference_subset(images, num_examples, count)
    batches = (
        batch.astype(np.float32) / 127.5 - 1.0
        for batch in images.take(count).batch(batch_size).as_numpy_iterator()
    )
    pool3, _ = features.of_batches(batches)
    stats = metrics.feature_statistics(pool3)
    # KID's features: a random subset too (the subset above is in file order).
    rows = np.random.default_rng(REFERENCE_SUBSET_SEED).permutation(len(pool3))
    stats["kid_features"] = pool3[np.sort(rows[:KID_REFERENCE_FEATURES])].astype(np.float32)
    os.makedirs(cache_dir, exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}.npz"
    np.savez(partial, **stats)
    os.replace(partial, path)
    return stats


def evaluate_generator(
    g_state,
    z_dim: int,
    features,
    reference: dict,
    num_samples: int,
    batch_size: int = 200,
    batch_statistics: bool = False,
) -> dict[str, float]:
    """FID, Inception Score and KID of `num_samples` images of `g_state` (fixed seed), as
    8-bit images, with the given feature network: for the digits classifier the distance
    is the FDD and the score the digits Inception Score (the keys stay "fid" and
    "inception_score"; "distance" and "features" say which)."""
    # Quantized to uint8 exactly as `sample --format png` writes them, and as the real
    # images are: the FID of a run equals that of its exported PNGs (pytorch-fid's input).
    batches = (
        sampling.quantize(images)
        for images in sampling.generated_batches(
            g_state, z_dim, num_samples, batch_size, 0, batch_statistics
        )
    )
    pool3, logits = features.of_batches(batches)
    fid = metrics.frechet_distance_of_features(pool3, reference["mu"], reference["sigma"])
    is_mean, is_std = metrics.inception_score(logits, INCEPTION_SCORE_SPLITS)
    kid_mean, kid_std = metrics.kernel_inception_distance(pool3, reference["kid_features"])
    return {
        "fid": fid,
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "inception_score_splits": INCEPTION_SCORE_SPLITS,
        "inception_score_logits": getattr(features, "score_logits", "classifier"),
        "kid": kid_mean,
        "kid_std": kid_std,
        "num_samples": num_samples,
        "num_reference": int(reference["n"]),
        "distance": getattr(features, "distance_name", "FID"),
        "features": getattr(features, "name", "unnamed"),
    }


def evaluate_and_record(state, config, features, reference, num_samples: int, workdir: str):
    """Evaluates the state's sampling generator and writes workdir/eval/step_<N>.json."""
    started = time.perf_counter()
    batch_stats = sampling.batch_statistics(config)
    results = evaluate_generator(
        sampling.sampling_generator(state, config),
        config.z_dim,
        features,
        reference,
        num_samples,
        200,
        batch_stats,
    )
    results["sample_batchnorm"] = "batch" if batch_stats else "running"
    results["step"] = int(state.step)
    results["ema_decay"] = float(config.ema_decay)
    results["seconds"] = time.perf_counter() - started
    out = os.path.join(workdir, "eval", f"step_{int(state.step):06d}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    return results, out


def run(
    workdir: str,
    num_samples: int,
    step: int | None,
    weights: str,
    inception_score_logits: str | None = None,
) -> dict:
    config, state = checkpointing.load_checkpoint(workdir, step)
    if num_samples < 2:
        raise UserError("--num_samples must be at least 2 (FID needs a covariance).")
    if inception_score_logits is not None:
        if inception_score_logits not in SCORE_LOGITS:
            raise UserError(
                f"--inception_score_logits must be one of {', '.join(SCORE_LOGITS)}, "
                f"got {inception_score_logits!r}. Fix: --inception_score_logits=unbiased."
            )
        with config.unlocked():
            config.inception_score_logits = inception_score_logits
    features, reference = features_and_reference(config, weights)
    results, out = evaluate_and_record(state, config, features, reference, num_samples, workdir)
    print(format_results(results) + f"\nWrote {out}.")
    return results


# FID is biased upward roughly linearly in 1/N (Chong & Forsyth, 2020): published figures
# use 50,000 generated images, and only figures with the same N compare.
PUBLISHED_NUM_SAMPLES = 50_000


def format_results(results: dict) -> str:
    distance = results.get("distance", "FID")
    score = "digits Inception Score" if distance == "FDD" else "Inception Score"
    convention = [f"{results.get('inception_score_splits', 10)} splits"]
    if results.get("inception_score_logits") in SCORE_LOGITS:
        convention.append(f"{results['inception_score_logits']} logits")
    text = (
        f"step {results['step']}: {distance} {results['fid']:.2f} | {score} "
        f"{results['inception_score']:.2f} +- {results['inception_score_std']:.2f}"
        f" ({', '.join(convention)}) | KID "
        f"{results['kid']:.4f} +- {results['kid_std']:.4f} ({results['num_samples']} samples "
        f"vs {results['num_reference']} training images; {results.get('features', 'inception')} "
        "features)"
    )
    if distance == "FID" and results["num_samples"] != PUBLISHED_NUM_SAMPLES:
        text += (
            f"\nNote: {results['num_samples']:,} generated samples; published FIDs use "
            f"{PUBLISHED_NUM_SAMPLES:,} (FID falls with more samples), so compare only "
            "figures with the same count."
        )
    return text


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    xla_flags.apply_defaults()
    f = flags.FLAGS
    with exit_on_user_error():
        run(f.workdir, f.num_samples, f.step, f.fid_weights, f.inception_score_logits)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Training run directory (its checkpoints/ are read).")
    flags.DEFINE_integer(
        "num_samples",
        PUBLISHED_NUM_SAMPLES,
        "Generated images to evaluate (FID needs >= 2; published FIDs use 50,000).",
        lower_bound=2,
    )
    flags.DEFINE_enum(
        "inception_score_logits",
        None,
        list(SCORE_LOGITS),
        "Logits of the Inception Score: unbiased (pool3 @ W, the original code's and "
        "torch-fidelity's) or biased (with the fc bias). Default: the run's config.",
    )
    flags.DEFINE_integer(
        "step", None, "Checkpoint step to evaluate (default: the latest).", lower_bound=0
    )
    flags.DEFINE_string("fid_weights", "", "Path of pt_inception-2015-12-05-6726825d.pth.")
    flags.mark_flags_as_required(["workdir"])
    from dcgan_jax.validation import parse_flags

    app.run(main, flags_parser=parse_flags)


class TrainingEvaluator:
    """Evaluation inside a training run: every `eval_every_steps`, FID/IS/KID of the
    sampling generator, logged and written to workdir/eval; the best-FID state is kept as a
    checkpoint in workdir/best_fid (itself a workdir: sample, evaluate and convert read it).

    Missing FID weights or reference data disable evaluation for the run with a warning;
    they never stop training.
    """

    def __init__(self, config, workdir: str):
        self._config, self._workdir = config, workdir
        self._features = self._reference = None
        self._disabled = False
        self._best_path = os.path.join(workdir, "best_fid", "best.json")
        self.best_fid = float("inf")
        if os.path.isfile(self._best_path):
            with open(self._best_path) as f:
                self.best_fid = json.load(f)["fid"]

    def __call__(self, state) -> dict | None:
        if self._disabled:
            return None
        config = self._config
        if self._features is None:
            try:
                self._features, self._reference = features_and_reference(config)
            except UserError as e:
                report.warning(f"evaluation is off for this run: {e}")
                self._disabled = True
                return None
        results, _ = evaluate_and_record(
            state, config, self._features, self._reference, config.eval_num_samples, self._workdir
        )
        if results["fid"] < self.best_fid:
            self.best_fid = results["fid"]
            self._save_best(state, results)
            results["new_best"] = True
        report.info(format_results(results) + (" (best so far)" if results.get("new_best") else ""))
        return results

    def _save_best(self, state, results: dict) -> None:
        best_dir = os.path.dirname(self._best_path)
        with checkpointing.make_manager(best_dir, max_to_keep=1) as manager:
            checkpointing.save(manager, state, self._config)
            checkpointing.finish_writes(manager)
        partial = f"{self._best_path}.partial"
        with open(partial, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(partial, self._best_path)
