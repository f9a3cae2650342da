"""A feature network for the digits dataset: FDD and a digits Inception Score, offline.

FID needs Inception weights and a download; the digits config needs neither. Instead a small
convolutional classifier, trained by this module in JAX on a fixed half of scikit-learn's
1,797 digits (at the config's resolution and channels, converted exactly as training sees
them), gives

- the **Frechet Digits Distance (FDD)**: the Frechet distance
  (`metrics.frechet_distance_of_features`, the same code as FID) between Gaussians fitted
  to its penultimate activations of generated and of real digits; the real statistics are
  those of the classifier's training half, so the other (held-out) half gives the floor a
  perfect generator would reach;
- a **digits Inception Score** from its softmax over the 10 classes (at most 10).

The classifier is deterministic from its seed and cached as an .npz after its first
training (a few seconds on a CPU). Features are computed at "highest" matmul precision so
that FDD does not depend on the backend.
"""

from __future__ import annotations

import hashlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dcgan_jax import metrics

NAME = "digits-classifier-v1"
FEATURES = 64  # width of the penultimate layer (the FDD features)
NUM_CLASSES = 10
SPLIT_SEED = 0  # which half of the digits trains the classifier; fixed for every run
CLASSIFIER_SEED = 0
_EPOCHS = 60
_BATCH = 64
_LEARNING_RATE = 2e-3


class Conv3x3(nn.Module):
    """A 3x3 'same' convolution with bias, as im2col and one matrix product: XLA:CPU
    differentiates that far faster than a `lax` convolution (minutes -> seconds here)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, c = x.shape
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (9 * c, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate(
            [padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1
        )
        return patches @ kernel + bias


class DigitsClassifier(nn.Module):
    """(N, H, W, C) images in [-1, 1] -> (penultimate features (N, 64), logits (N, 10))."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for width in (32, 64):
            x = nn.relu(Conv3x3(width)(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        features = nn.relu(nn.Dense(FEATURES)(x.reshape(x.shape[0], -1)))
        return features, nn.Dense(NUM_CLASSES)(features)


def digits_split(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a fixed random half each, sorted."""
    order = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
    half = num_examples // 2
    return np.sort(order[:half]), np.sort(order[half:])


def load_digits(config) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, H, W, C) in the config's model format (as training
    reads them), and their labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    from dcgan_jax import input_pipeline

    images = input_pipeline.source_images(config, 0, 1).images
    images = np.stack(list(images.as_numpy_iterator()))
    return images, sklearn_digits().target.astype(np.int32)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1], as the GAN sees them."""
    return images.astype(np.float32) / 127.5 - 1.0


def _shift(images: jax.Array, key: jax.Array) -> jax.Array:
    """Each image translated by up to one pixel in each direction (zero, i.e. -1, fill)."""
    n, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (n, 2), 0, 3)
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, image.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int = CLASSIFIER_SEED):
    """Parameters of a DigitsClassifier trained with Adam on (images in [-1, 1], labels),
    with one-pixel random shifts; deterministic from `seed`."""
    model = DigitsClassifier()
    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_key, jnp.asarray(images[:1]))["params"]
    steps_per_epoch = len(images) // _BATCH
    schedule = optax.cosine_decay_schedule(_LEARNING_RATE, _EPOCHS * steps_per_epoch)
    optimizer = optax.adam(schedule)

    @jax.jit
    def epoch(params, opt_state, key):
        order_key, shift_key = jax.random.split(key)
        order = jax.random.permutation(order_key, len(images))[: steps_per_epoch * _BATCH]
        x = _shift(jnp.asarray(images)[order], shift_key)
        y = jnp.asarray(labels)[order]
        batches = (x.reshape(steps_per_epoch, _BATCH, *x.shape[1:]), y.reshape(-1, _BATCH))

        def step(carry, batch):
            params, opt_state = carry

            def loss_fn(p):
                logits = model.apply({"params": p}, batch[0])[1]
                return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

            grads = jax.grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state

    opt_state = optimizer.init(params)
    for _ in range(_EPOCHS):
        key, epoch_key = jax.random.split(key)
        params, opt_state = epoch(params, opt_state, epoch_key)
    return params


class DigitsFeatures:
    """The digits classifier as a feature extractor, with the interface of
    `metrics.InceptionFeatures`: batches of images in [-1, 1] -> (features, logits)."""

    name = NAME
    distance_name = "FDD"

    def __init__(self, params):
        self.params = jax.device_put(params)

        def apply(params, images):
            with jax.default_matmul_precision("highest"):
                return DigitsClassifier().apply({"params": params}, images)

        self._apply = jax.jit(apply)

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self._apply(self.params, jnp.asarray(images, jnp.float32))
        return np.asarray(features), np.asarray(logits)

    def of_batches(self, batches) -> tuple[np.ndarray, np.ndarray]:
        features, logits = zip(*(self(batch) for batch in batches), strict=True)
        return np.concatenate(features), np.concatenate(logits)

    def of_array(self, images: np.ndarray, batch_size: int = 500):
        return self.of_batches(
            images[i : i + batch_size] for i in range(0, len(images), batch_size)
        )

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float((self.of_array(images)[1].argmax(1) == labels).mean())


def _cache_path(cache_dir: str, shape: tuple[int, ...], seed: int) -> str:
    # Keyed by everything that changes the weights: recipe, input shape, seed, split.
    key = f"{NAME}|{shape}|seed{seed}|split{SPLIT_SEED}|{_EPOCHS},{_BATCH},{_LEARNING_RATE}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"{NAME}_{'x'.join(map(str, shape))}_{digest}.npz")


class DigitsEvaluation:
    """Everything FDD needs for a digits config: the feature network (trained once, then
    read from `cache_dir`), the real digits split in two, and the training half's
    statistics (the reference)."""

    def __init__(self, config, cache_dir: str, seed: int = CLASSIFIER_SEED):
        images, labels = load_digits(config)
        train, held_out = digits_split(len(images))
        self.images = to_model_range(images)
        self.train_images = to_model_range(images[train])
        self.held_out_images = to_model_range(images[held_out])
        self.train_labels, self.held_out_labels = labels[train], labels[held_out]
        path = _cache_path(cache_dir, images.shape[1:], seed)
        params = None
        if os.path.isfile(path):
            try:
                with np.load(path) as cached:
                    flat = {tuple(k.split("/")): cached[k] for k in cached.files}
                params = _unflatten(flat)
            except (OSError, ValueError, KeyError):
                params = None  # unreadable cache: retrain (and rewrite it below)
        self.trained_now = params is None
        if params is None:
            params = train_classifier(self.train_images, self.train_labels, seed)
            os.makedirs(cache_dir, exist_ok=True)
            partial = f"{path}.partial-{os.getpid()}.npz"
            flat = jax.tree_util.tree_flatten_with_path(params)[0]
            np.savez(
                partial, **{"/".join(k.key for k in path_): np.asarray(v) for path_, v in flat}
            )
            os.replace(partial, path)
        self.features = DigitsFeatures(params)
        self.held_out_accuracy = self.features.accuracy(self.held_out_images, self.held_out_labels)
        train_features, _ = self.features.of_array(self.train_images)
        self.reference = metrics.feature_statistics(train_features)
        self.reference["kid_features"] = train_features

    def fdd_and_is(self, images: np.ndarray) -> dict[str, float]:
        """FDD against the training half and the digits Inception Score of `images`
        (float32 in [-1, 1])."""
        features, logits = self.features.of_array(images)
        fdd = metrics.frechet_distance_of_features(
            features, self.reference["mu"], self.reference["sigma"]
        )
        is_mean, is_std = metrics.inception_score(logits)
        return {"fdd": fdd, "is": is_mean, "is_std": is_std, "num_samples": len(images)}

    def floor(self) -> dict[str, float]:
        """The held-out real digits scored as if generated: what a perfect generator gets
        with this many samples."""
        return self.fdd_and_is(self.held_out_images)


def _unflatten(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = jnp.asarray(value)
    return tree
