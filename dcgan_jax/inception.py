"""The Inception-v3 of FID (pytorch-fid / TTUR), in Flax, and its weights without PyTorch.

This is the network of the TensorFlow graph `inception-2015-12-05` that FID is defined
with, in the form pytorch-fid gives it: torchvision's Inception-v3 blocks with the graph's
differences (average pools that do not count padding, a max pool in the last block's pool
branch, 1008 output classes). `pool3` features (2048-d) give FID and KID; the logits give
the Inception Score. Inputs are NHWC images in [-1, 1], resized to 299x299 bilinearly
(half-pixel centres, no antialiasing) as pytorch-fid does.

Parameter names follow pytorch-fid's state dict (`Mixed_5b.branch1x1.conv.weight`, ...),
so its weight file `pt_inception-2015-12-05-6726825d.pth` loads by name. The file is a
PyTorch zip archive; `read_torch_state_dict` reads it with zipfile and pickle alone.
"""

from __future__ import annotations

import functools
import pickle
import zipfile
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
)
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the 2015 graph's classifier (1000 ImageNet classes + 8 unused)
# Weights + biases, as PyTorch counts them (BatchNorm running statistics are buffers).
NUM_PARAMETERS = 23_850_960


def _pads(kernel: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((kernel[0] // 2, kernel[0] // 2), (kernel[1] // 2, kernel[1] // 2))


# Full float32 products on every backend: the default lets GPUs use TF32 and TPUs bfloat16
# passes (~1e-3 relative), which would move FID away from the float32 reference features
# it is compared with. Evaluation is a small share of a run's time.
FEATURE_PRECISION = jax.lax.Precision.HIGHEST


class BasicConv(nn.Module):
    """Convolution without bias, BatchNorm (epsilon 1e-3, inference mode), ReLU."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    same: bool = True  # pad kernel // 2 on each side (the "padding=k//2" of torchvision)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=self.stride,
            padding=_pads(self.kernel) if self.same else "VALID",
            use_bias=False,
            precision=FEATURE_PRECISION,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    # The 2015 graph's average pools divide by the number of real (unpadded) pixels.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, same=False, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, same=False, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, same=False, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, same=False, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    max_pool_branch: bool  # the last block (Mixed_7c) pools with max in the 2015 graph

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv(384, (1, 3), name="branch3x3_2a")(b3),
                BasicConv(384, (3, 1), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv(384, (1, 3), name="branch3x3dbl_3a")(bd),
                BasicConv(384, (3, 1), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.max_pool_branch:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Images (N, H, W, 3) in [-1, 1] -> {"pool3": (N, 2048), "logits": (N, 1008)}."""

    @nn.compact
    def __call__(self, images):
        x = resize_for_inception(images)
        x = BasicConv(32, (3, 3), stride=2, same=False, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), same=False, name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), same=False, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool_branch=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool_branch=True, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        fc = nn.Dense(NUM_CLASSES, precision=FEATURE_PRECISION, name="fc")
        logits = fc(pool3)
        # The original Inception Score code (and torch-fidelity's default) takes the softmax
        # of pool3 @ W, without the fc layer's bias: both are returned.
        unbiased = jnp.dot(pool3, fc.variables["params"]["kernel"], precision=FEATURE_PRECISION)
        return {"pool3": pool3, "logits": logits, "logits_unbiased": unbiased}


def resize_for_inception(images: jax.Array) -> jax.Array:
    """NHWC images -> 299x299 RGB, bilinear with half-pixel centres and no antialiasing
    (PyTorch's interpolate(mode="bilinear", align_corners=False)); 1 channel -> 3."""
    images = jnp.asarray(images, jnp.float32)
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    n, h, w, c = images.shape
    if (h, w) == (INPUT_SIZE, INPUT_SIZE):
        return images
    return jax.image.resize(
        images, (n, INPUT_SIZE, INPUT_SIZE, c), method="bilinear", antialias=False
    )


@functools.cache
def variable_shapes() -> dict:
    """The shapes of FIDInceptionV3's variables (abstract evaluation: nothing is computed,
    but tracing the network takes ~0.9 s, so once per process). Do not modify the result."""
    abstract = jax.eval_shape(
        FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3))
    )
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), abstract)


def random_variables(seed: int = 0) -> dict:
    """Variables with random values of plausible scale (tests; no file needed): He-scaled
    kernels, BatchNorm scales near 1, small biases and means, variances near 1."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(
        draw, variable_shapes(), is_leaf=lambda x: isinstance(x, tuple)
    )


# --- weights -----------------------------------------------------------------------------


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds the tensors of a torch.save zip archive as NumPy arrays, without torch."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weight file")

    def persistent_load(self, pid):
        _, dtype, key, _, _ = pid  # ("storage", storage type, key, location, size)
        data = self._archive.read(f"{self._prefix}/data/{key}")
        return np.frombuffer(data, dtype=dtype)

    @staticmethod
    def _rebuild_tensor(storage, offset, size, stride, *unused):
        del unused
        itemsize = storage.itemsize
        return np.lib.stride_tricks.as_strided(
            storage[offset:], shape=tuple(size), strides=[s * itemsize for s in stride]
        ).copy()


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """name -> array from a (zip-format) torch.save file of tensors, without PyTorch."""
    with zipfile.ZipFile(path) as archive:
        (pickle_name,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        prefix = pickle_name[: -len("/data.pkl")]
        with archive.open(pickle_name) as f:
            state = _TorchUnpickler(f, archive, prefix).load()
    return {k: np.asarray(v) for k, v in state.items()}


def variables_from_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
    """pytorch-fid's state dict -> Flax variables of FIDInceptionV3 (checked against the
    model's own shapes: a missing, extra or misshapen tensor raises ValueError)."""
    expected = variable_shapes()
    params, stats = {}, {}
    used = set()
    for name, value in state_dict.items():
        *path, leaf = name.split(".")
        if leaf == "num_batches_tracked":
            continue
        if path[-1] == "fc":
            target, key = params, ("kernel" if leaf == "weight" else "bias")
            value = value.T if leaf == "weight" else value
        elif path[-1] == "conv":
            target, key, value = params, "kernel", np.transpose(value, (2, 3, 1, 0))
        elif leaf in ("running_mean", "running_var"):
            target, key = stats, ("mean" if leaf == "running_mean" else "var")
        else:  # BatchNorm weight / bias
            target, key = params, ("scale" if leaf == "weight" else "bias")
        node = target
        for part in path:
            node = node.setdefault(part, {})
        node[key] = np.asarray(value, np.float32)
        used.add(name)
    variables = {"params": params, "batch_stats": stats}
    got = jax.tree_util.tree_map(lambda x: x.shape, variables)
    if got != expected:
        missing = _flat_names(expected) ^ _flat_names(got)
        raise ValueError(
            "the weight file does not have the FID Inception-v3 layout "
            f"(differences: {sorted(missing)[:5]} ...)"
            if missing
            else "the weight file has the FID Inception-v3 names but other shapes"
        )
    return variables


def state_dict_from_variables(variables: dict) -> dict[str, np.ndarray]:
    """The inverse of variables_from_state_dict (PyTorch layouts and names)."""
    state = {}
    for path, value in jax.tree_util.tree_leaves_with_path(variables):
        keys = [p.key for p in path]
        collection, *module, leaf = keys
        value = np.asarray(value)
        if collection == "batch_stats":
            name = "running_mean" if leaf == "mean" else "running_var"
        elif leaf == "kernel" and module[-1] == "fc":
            name, value = "weight", value.T
        elif leaf == "kernel":
            name, value = "weight", np.transpose(value, (3, 2, 0, 1))
        else:
            name = {"scale": "weight", "bias": "bias"}[leaf]
        state[".".join([*module, name])] = np.ascontiguousarray(value)
    return state


def _flat_names(tree) -> set[str]:
    return {
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_leaves_with_path(
            tree, is_leaf=lambda x: isinstance(x, tuple)
        )
    }
