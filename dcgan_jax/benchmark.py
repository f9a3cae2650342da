"""Side-by-side training speed of this project and the PyTorch reference, in one process.

    python -m dcgan_jax.benchmark --config configs/cifar.py [--batch_size 64]
        [--precision fp32|bf16] [--windows 7] [--steps_per_window 5] [--torch_compile]
        [--json results.json]

Both sides train the same architecture on the same synthetic batch, already on the device
(PyTorch on CUDA when present, else CPU). Timed windows alternate JAX, PyTorch, JAX, ... so
that drift of a shared machine hits both; the table reports the median of the windows.
Needs no TensorFlow.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

from dcgan_jax import models, train
from dcgan_jax.validation import UserError, exit_on_user_error, validate_config


def forward_flops_per_image(config) -> tuple[float, float]:
    """FLOPs (2 x multiply-adds) of one image through G and through D, forward only."""
    widths_g = models.generator_widths(config.g_features, config.image_size)
    g = config.z_dim * 16 * widths_g[0]  # 4x4 projection
    size = 4
    for c_in, c_out in zip(widths_g, [*widths_g[1:], config.channels], strict=True):
        size *= 2
        g += size * size * c_out * c_in * 4  # each output sees 2x2 taps of the 4x4 kernel
    widths_d = models.discriminator_widths(config.d_features, config.image_size)
    d, size = 0, config.image_size
    for c_in, c_out in zip([config.channels, *widths_d[:-1]], widths_d, strict=True):
        size //= 2
        d += size * size * c_out * c_in * 16
    d += 16 * widths_d[-1]  # head
    return 2.0 * g, 2.0 * d


def step_flops_per_image(config) -> float:
    """Nominal FLOPs of one training step per image.

    G: forward + backward (3x forward). D step: forward and backward on real and on fake
    (2 x 3x). G step: D forward and backward to its input only (2x).
    """
    g, d = forward_flops_per_image(config)
    return 3 * g + 6 * d + 2 * d


class JaxRunner:
    """The training step exactly as `train.py` runs it (pmap over all local devices)."""

    name = "jax"

    def __init__(self, config, batch: np.ndarray):
        devices = jax.local_devices()
        self.devices = devices
        self.p_step = train.make_p_train_step(devices, update_ema=config.ema_decay > 0)
        self.state = train.replicate(train.init_state(config), devices)
        per_device = batch.reshape(len(devices), -1, *batch.shape[1:])
        self.batch = jax.device_put(per_device, train.device_sharding(devices))
        self.metrics = None

    def run(self, num_steps: int) -> None:
        for _ in range(num_steps):
            self.state, self.metrics = self.p_step(self.state, self.batch)
        jax.block_until_ready(self.metrics)

    def peak_memory_bytes(self) -> int | None:
        stats = self.devices[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    def device_name(self) -> str:
        d = self.devices[0]
        return f"{len(self.devices)} x {d.device_kind} ({d.platform})"


class TorchRunner:
    """pytorch/examples' training iteration (torch_reference.train_step), eager or compiled."""

    def __init__(self, config, batch: np.ndarray, bf16: bool, compile_models: bool):
        import torch

        from dcgan_jax import torch_reference

        self.torch = torch
        self.name = "torch.compile" if compile_models else "torch"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net_g, net_d, _, _ = torch_reference.build(config)
        net_g, net_d = net_g.to(self.device), net_d.to(self.device)
        self.opt_g, self.opt_d = torch_reference.make_optimizers(config, net_g, net_d)
        if compile_models:
            net_g, net_d = torch.compile(net_g), torch.compile(net_d)
        self.net_g, self.net_d = net_g, net_d
        self.step_fn = torch_reference.train_step
        self.real = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(
            self.device
        )
        self.noise = torch.randn(batch.shape[0], config.z_dim, device=self.device)
        self.bf16 = bf16
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats()

    def run(self, num_steps: int) -> None:
        torch = self.torch
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for _ in range(num_steps):
                self.step_fn(self.net_g, self.net_d, self.opt_g, self.opt_d, self.real, self.noise)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def peak_memory_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return int(self.torch.cuda.max_memory_allocated())
        return None

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return self.torch.cuda.get_device_name()
        return f"CPU ({self.torch.get_num_threads()} threads)"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(runner, batch_size: int, steps_per_window: int, timings: dict) -> None:
    """Times one window of `runner` and appends its images/s to `timings[runner.name]`."""
    start = time.perf_counter()
    runner.run(steps_per_window)
    elapsed = time.perf_counter() - start
    timings.setdefault(runner.name, []).append(steps_per_window * batch_size / elapsed)


def run_benchmark(
    config,
    *,
    windows: int = 7,
    steps_per_window: int = 5,
    torch_side: bool = True,
    torch_compile: bool = False,
) -> dict:
    """Runs the comparison and returns the results as a dict (see `format_table`)."""
    validate_config(config, jax.local_device_count())
    if windows < 1 or steps_per_window < 1:
        raise UserError("--windows and --steps_per_window must be >= 1.")
    bf16 = bool(config.half_precision)
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.image_size, config.image_size, config.channels)
    batch = rng.uniform(-1, 1, shape).astype(np.float32)

    runners, first_step_s = [], {}
    start = time.perf_counter()
    jax_runner = JaxRunner(config, batch)
    jax_runner.run(1)
    first_step_s["jax"] = time.perf_counter() - start
    runners.append(jax_runner)
    if torch_side:
        variants = [False, True] if torch_compile else [False]
        for compiled in variants:
            start = time.perf_counter()
            try:
                runner = TorchRunner(config, batch, bf16, compiled)
                runner.run(1)
            except Exception as e:  # torch.compile needs a working compiler toolchain
                if not compiled:
                    raise
                print(f"torch.compile unavailable here: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            first_step_s[runner.name] = time.perf_counter() - start
            runners.append(runner)

    # One untimed window each (caches, autotuning, thread pools), then alternate.
    for runner in runners:
        runner.run(steps_per_window)
    timings: dict[str, list[float]] = {}
    for _ in range(windows):
        for runner in runners:
            measure(runner, config.batch_size, steps_per_window, timings)

    flops = step_flops_per_image(config)
    results = {
        "config": {
            k: config[k]
            for k in ("dataset", "image_size", "channels", "z_dim", "g_features", "d_features")
        },
        "batch_size": config.batch_size,
        "precision": "bf16" if bf16 else "fp32",
        "windows": windows,
        "steps_per_window": steps_per_window,
        "step_gflop_per_image": flops / 1e9,
        "host_cpu": _cpu_name(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__},
        "peak_process_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "frameworks": {},
    }
    try:
        import flax

        results["versions"]["flax"] = flax.__version__
    except ImportError:
        pass
    for runner in runners:
        rates = timings[runner.name]
        peak_bytes = runner.peak_memory_bytes()
        median = statistics.median(rates)
        results["frameworks"][runner.name] = {
            "device": runner.device_name(),
            "images_per_s": median,
            "images_per_s_windows": rates,
            "step_ms": 1000 * config.batch_size / median,
            "first_step_s": first_step_s[runner.name],
            "peak_memory_mib": None if peak_bytes is None else peak_bytes / 2**20,
            "gflop_per_s": median * flops / 1e9,
        }
    frameworks = results["frameworks"]
    results["jax_images_per_s"] = frameworks["jax"]["images_per_s"]
    if "torch" in frameworks:
        import torch

        results["versions"]["torch"] = torch.__version__
        results["torch_images_per_s"] = frameworks["torch"]["images_per_s"]
        results["ratio"] = results["jax_images_per_s"] / results["torch_images_per_s"]
    if "torch.compile" in frameworks:
        results["torch_compile_images_per_s"] = frameworks["torch.compile"]["images_per_s"]
        results["ratio_vs_torch_compile"] = (
            results["jax_images_per_s"] / results["torch_compile_images_per_s"]
        )
    return results


def format_table(results: dict) -> str:
    """The results as a fixed-width text table."""
    lines = [
        f"DCGAN training step, batch {results['batch_size']}, {results['precision']}, "
        f"{results['config']['image_size']}x{results['config']['image_size']}"
        f"x{results['config']['channels']}, "
        f"{results['step_gflop_per_image']:.2f} GFLOP/image/step; host CPU: {results['host_cpu']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        f"{'':14} {'images/s':>10} {'step ms':>9} {'1st step s':>10} {'GFLOP/s':>9} "
        f"{'peak MiB':>9}  device",
    ]
    for name, r in results["frameworks"].items():
        peak = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        lines.append(
            f"{name:14} {r['images_per_s']:10.1f} {r['step_ms']:9.1f} {r['first_step_s']:10.1f} "
            f"{r['gflop_per_s']:9.1f} {peak:>9}  {r['device']}"
        )
    if "ratio" in results:
        lines.append(f"JAX / PyTorch eager: {results['ratio']:.2f}x images/s")
    if "ratio_vs_torch_compile" in results:
        lines.append(f"JAX / torch.compile: {results['ratio_vs_torch_compile']:.2f}x images/s")
    lines.append(
        f"medians of {results['windows']} alternating windows of "
        f"{results['steps_per_window']} steps; process peak RSS "
        f"{results['peak_process_rss_mib']:.0f} MiB"
    )
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    config = f.config
    with config.unlocked():
        if f.batch_size is not None:
            config.batch_size = f.batch_size
        if f.precision is not None:
            if f.precision not in ("fp32", "bf16"):
                raise app.UsageError("--precision must be fp32 or bf16")
            config.half_precision = f.precision == "bf16"
    with exit_on_user_error():
        results = run_benchmark(
            config,
            windows=f.windows,
            steps_per_window=f.steps_per_window,
            torch_side=not f.no_torch,
            torch_compile=f.torch_compile,
        )
    print(format_table(results))
    if f.json:
        with open(f.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar.py.")
    flags.DEFINE_integer("batch_size", None, "Global batch size (default: the config's).")
    flags.DEFINE_string("precision", None, "fp32 or bf16 (default: the config's).")
    flags.DEFINE_integer("windows", 7, "Timed windows per framework.")
    flags.DEFINE_integer("steps_per_window", 5, "Training steps per timed window.")
    flags.DEFINE_bool("torch_compile", False, "Also time the reference under torch.compile.")
    flags.DEFINE_bool("no_torch", False, "Time only the JAX side (no PyTorch needed).")
    flags.DEFINE_string("json", None, "Also write the results as JSON to this path.")
    flags.mark_flags_as_required(["config"])
    from dcgan_jax.validation import parse_flags

    app.run(main, flags_parser=parse_flags)
