"""Every config field, with its default. The files in configs/ start from this.

Kept inside the package (not in configs/) so that config files can be loaded from any
directory and so that validation knows the full set of fields.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The defaults: the 32x32 CIFAR-10 model of configs/cifar.py."""
    config = ml_collections.ConfigDict()

    # Data. `dataset` is a TFDS name (cifar10, mnist, fashion_mnist, celeb_a,
    # lsun/<category>), `digits` (the 8x8 handwritten digits that scikit-learn ships; no
    # download) or `folder:/path/to/images` (jpg/png/gif/bmp files, nested or flat).
    config.dataset = "cifar10"
    # Where TFDS keeps (and downloads) datasets; empty means TFDS's default (~/tensorflow_datasets).
    config.data_dir = ""
    config.image_size = 32  # a power of two >= 16; the number of blocks follows from it
    config.channels = 3  # 1 (grayscale) or 3 (RGB); images are converted to this
    # Images are cut to a centered square and resized to image_size. The square's side:
    # crop_size pixels (e.g. 108 for the face region of aligned CelebA), or 0 for the
    # largest square that fits (= resize the shorter side, then center crop).
    config.crop_size = 0
    # How processes of a multi-host run divide the data. "process_shares": each reads its
    # own 1/P of the split (scales to any dataset; the data order depends on P).
    # "global_batches": each reads the whole stream and keeps its rows of every global
    # batch (the same numbers on any number of processes; every process decodes all data).
    config.input_sharding = "process_shares"
    # Each epoch's order. "permutation": a uniform random permutation of the whole
    # dataset drawn from (seed, epoch), as PyTorch's DataLoader(shuffle=True), for the
    # sources with random access (folders, digits; files decoded as they are read).
    # TFDS datasets (stored pre-shuffled, read in sequence) and "window" (the order of runs
    # from before permutations) shuffle through a window of shuffle_buffer_size examples.
    config.epoch_order = "permutation"
    config.shuffle_buffer_size = 50_000
    # The decoded, resized images are kept in memory after the first epoch when they take
    # less than this many GiB (CelebA at 64x64: 2.3 GiB); larger datasets are decoded again
    # every epoch. 0 never caches. The data order is the same either way.
    config.cache_limit_gib = 4.0

    # Model. Widths of the feature maps: the generator's narrowest hidden layer has
    # g_features channels and doubles per block towards 4x4; the discriminator's first has
    # d_features and doubles per block.
    config.z_dim = 100
    config.g_features = 256
    config.d_features = 64
    # Discriminator head on its 4x4 features: "linear" (with bias) or "conv" (4x4 conv
    # without bias, as in pytorch/examples dcgan).
    config.d_head = "linear"
    # How the stride-2 (transposed) convolutions are computed: "matmul" (as matrix
    # products: much faster under XLA:CPU), "lax" (XLA's native convolutions: cuDNN on GPUs),
    # "winograd" (Winograd's algorithm: 9/16 of the multiplies, plus transforms),
    # "mixed" ("matmul", except that D's wider layers take XLA's native convolution but the
    # matrix product's input gradient, or Winograd's algorithm where they do >= 2^23
    # multiply-adds per image, and that G's layers whose input and output are both >= 256
    # channels wide take Winograd's algorithm: faster still on XLA:CPU) or
    # "auto" (the one measured faster on the backend in use; see the README's speed
    # section). The same function either way:
    # results agree to rounding, and checkpoints move freely between them.
    config.convolutions = "auto"
    # bfloat16 activations and convolutions (parameters, BatchNorm statistics and the
    # optimiser stay float32). For GPUs and TPUs; slower on most CPUs.
    config.half_precision = False

    # Optimisation: Adam for both networks, as in the paper.
    config.batch_size = 64  # global; split evenly across all local devices
    config.num_train_steps = 20_000
    config.learning_rate = 2e-4
    config.beta1 = 0.5
    config.beta2 = 0.999
    config.seed = 0  # 0 <= seed < 2**31; fixes initialisation, noise and data order
    # Exponential moving average of the generator's weights, used for samples and
    # evaluation: 0 = off (the weights themselves), e.g. 0.999 = an average over ~1,000
    # steps. Checkpointed with the state.
    config.ema_decay = 0.0
    # The EMA's decay at step t is min(ema_decay, (1 + t) / (10 + t)) (TensorFlow's
    # warm-up), so that the average soon forgets the random initial weights; False: always
    # ema_decay. Measured on the digits (README "Quality").
    config.ema_warmup = True

    # Outputs, in steps.
    config.log_every_steps = 100
    config.sample_every_steps = 1000
    config.num_samples = 64  # images in each sample grid (the fixed noise)
    # BatchNorm when sampling (grids, `sample`, `evaluate`): "running" = the running
    # averages (inference mode); "batch" = the statistics of each generated batch, as
    # pytorch/examples draws its grids. On the digits, running measured no worse (README).
    config.sample_batchnorm = "running"
    config.checkpoint_every_steps = 1000
    config.max_checkpoints = 3
    # Evaluation during training (FID, Inception Score, KID; see dcgan_jax/evaluate.py):
    # every eval_every_steps steps (0 = never) on eval_num_samples generated images; the
    # best-FID state is kept in workdir/best_fid. fid_weights: the path of
    # pt_inception-2015-12-05-6726825d.pth; empty = ~/.cache/dcgan_jax, downloaded once.
    # Without the weights, evaluation is skipped with a warning and training goes on.
    config.eval_every_steps = 0
    # The feature network: "auto" = the digits classifier (FDD, no download; see
    # dcgan_jax/digits_features.py) for the digits dataset, the FID Inception otherwise;
    # "inception" or "digits" to choose.
    config.eval_features = "auto"
    # 10,000 keeps in-training evaluation quick; its FIDs are higher than, and not
    # comparable with, published 50,000-sample figures (`evaluate` defaults to 50,000).
    config.eval_num_samples = 10_000
    # The Inception Score's logits: "unbiased" (pool3 @ W: the original IS code and
    # torch-fidelity) or "biased" (with the fc layer's bias). Results record which.
    config.inception_score_logits = "unbiased"
    config.fid_weights = ""
    # Training images the reference statistics are computed from (a seeded uniform subset
    # of the split), and where they are cached (empty = ~/.cache/dcgan_jax/fid_stats).
    config.fid_reference_samples = 50_000
    config.fid_stats_dir = ""
    # Non-finite losses are looked for at every log line (and parameters before every
    # checkpoint); this also checks every step, at the cost of a device sync per step.
    config.check_finite_every_step = False
    return config


def with_overrides(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
    """A copy of `config` with `overrides` set (the original is left as it is)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key, value in overrides.items():
            config[key] = value
    return config


def upgrade_legacy_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Rewrites fields of older versions in place (configs and checkpoints written before):
    `fast_convolutions=True` (the old default) becomes `convolutions="auto"`, `False`
    becomes `convolutions="lax"`; fields added later get the value that behaves as before
    (`eval_features="auto"`, which differs only on the digits; `sample_batchnorm="running"`;
    `ema_warmup=False`; `epoch_order="window"`).
    Returns `config`."""
    for field, default in (
        ("eval_features", "auto"),
        ("sample_batchnorm", "running"),
        ("ema_warmup", False),
        ("epoch_order", "window"),
    ):
        if field not in config:
            with config.unlocked():
                config[field] = default
    if "fast_convolutions" in config:
        with config.unlocked():
            fast = config.fast_convolutions
            del config["fast_convolutions"]
            if "convolutions" not in config or config.convolutions == "auto":
                config.convolutions = "auto" if fast is not False else "lax"
    return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file such as configs/cifar.py (for notebooks and scripts;
    the command line uses ml_collections' --config flag)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dcgan_jax_config_file", path)
    if spec is None or not path.endswith(".py"):
        raise FileNotFoundError(f"{path!r} is not a Python config file (configs/<name>.py)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return upgrade_legacy_fields(module.get_config())
