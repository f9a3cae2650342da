"""Side-by-side training speed of this project and the PyTorch reference, in one process.

    python -m dcgan_jax.benchmark --config configs/cifar.py [--config.batch_size=64]
        [--precision fp32|bf16] [--windows 7] [--steps_per_window 5] [--min_window_s 0.2]
        [--torch_compile [--torch_compile_mode reduce-overhead]] [--json results.json]
    python -m dcgan_jax.benchmark --config configs/cifar.py --profile   # step_profile.py
    python -m dcgan_jax.benchmark --config configs/celeba.py --sweep --out DIR   # sweep.py
    python -m dcgan_jax.benchmark --suite --out DIR    # an accelerator (benchmark_suite.py)

Both sides train the same architecture on the same synthetic batch, already on the device
(PyTorch on CUDA when present, else CPU). Timed windows alternate JAX, PyTorch, JAX, ... so
that drift of a shared machine hits both; the table reports the median of the windows.
Needs no TensorFlow.
"""

from __future__ import annotations

if __name__ == "__main__":
    # Before the imports below, which a restart would do twice (1.3-1.6 s).
    from dcgan_jax import allocator

    allocator.reexec_with_tunables()  # both frameworks run under it

import contextlib
import importlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dcgan_jax import allocator, default_config, models, train, xla_flags
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
    """The training step exactly as `train.py` runs it (pmap over all local devices).

    `convolutions` overrides the config's formulation (`models.FORMULATIONS`); the runner is
    named after it ("jax matmul") when given. The step is compiled ahead of time, so that
    its memory footprint can be read from the compiled executable.
    """

    def __init__(self, config, batch: np.ndarray, convolutions: str | None = None):
        self.name = "jax" if convolutions is None else f"jax {convolutions}"
        if convolutions is not None:
            config = default_config.with_overrides(config, convolutions=convolutions)
        devices = jax.local_devices()
        self.devices = devices
        p_step = train.train_step_for(config, devices)
        # As `train` does: the step compiles while the state is initialised.
        p_step.start_compiling(*train.abstract_step_arguments(config, devices))
        state = train.replicate(train.init_state(config), devices)
        per_device = batch.reshape(len(devices), -1, *batch.shape[1:])
        self.batch = jax.device_put(per_device, train.device_sharding(devices))
        self.step, self.state, self.metrics = p_step, state, None

    def run(self, num_steps: int) -> None:
        for _ in range(num_steps):
            self.state, self.metrics = self.step(self.state, self.batch)
        jax.block_until_ready(self.metrics)

    def peak_memory_bytes(self) -> int | None:
        """The compiled step's device memory: its arguments (the state and the batch), its
        temporaries and its outputs (less any output that reuses an argument's buffer; the
        step donates none)."""
        try:
            m = self.step.compiled.memory_analysis()  # AttributeError without the AOT path
            if isinstance(m, (list, tuple)):
                m = m[0]
            total = (
                m.argument_size_in_bytes
                + m.output_size_in_bytes
                + m.temp_size_in_bytes
                - m.alias_size_in_bytes
            )
            return int(total) // len(self.devices)
        except Exception:  # not every backend and version reports it
            return None

    def device_name(self) -> str:
        d = self.devices[0]
        return f"{len(self.devices)} x {d.device_kind} ({d.platform})"


class TorchRunner:
    """pytorch/examples' training iteration (torch_reference.train_step), eager or compiled.

    As in the JAX step, the metrics stay on the device (no host sync inside a window), and
    under bf16 only the forward passes are autocast.
    """

    def __init__(
        self,
        config,
        batch: np.ndarray,
        bf16: bool,
        compile_models: bool,
        compile_mode: str = "default",
    ):
        import torch

        from dcgan_jax import torch_reference

        self.torch = torch
        self.name = "torch.compile" if compile_models else "torch"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            # As pytorch/examples does: cuDNN picks its fastest algorithm per shape.
            torch.backends.cudnn.benchmark = True
            torch_reference.use_tf32_for_speed()
            torch.cuda.synchronize()
            allocated_before = torch.cuda.memory_allocated()
        net_g, net_d, _, _ = torch_reference.build(config)
        net_g, net_d = net_g.to(self.device), net_d.to(self.device)
        self.opt_g, self.opt_d = torch_reference.make_optimizers(config, net_g, net_d)
        if compile_models:
            # A fresh start for each runner: dynamo's caches are keyed on the forward's code
            # object, shared by every model built here, and would otherwise fill up over
            # the suite's shapes or switch to slower shape-generic kernels.
            torch._dynamo.reset()
            net_g = torch.compile(net_g, dynamic=False, mode=compile_mode)
            net_d = torch.compile(net_d, dynamic=False, mode=compile_mode)
        # CUDA graphs ("reduce-overhead", "max-autotune") reuse their output buffers: each
        # training iteration must be marked as a new one, or its outputs would be
        # overwritten while the previous iteration still holds them.
        self.cuda_graphs = (
            compile_models and self.cuda and compile_mode in ("reduce-overhead", "max-autotune")
        )
        self.net_g, self.net_d = net_g, net_d
        self.step_fn = torch_reference.train_step
        self.real = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(
            self.device
        )
        self.noise = torch.randn(batch.shape[0], config.z_dim, device=self.device)
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.peak_bytes = None
        if self.cuda:
            self.persistent_bytes = torch.cuda.memory_allocated() - allocated_before

    def run(self, num_steps: int) -> None:
        torch = self.torch
        if self.cuda:
            # This runner's own peak: what the window allocated beyond what was allocated
            # when it began (the other runners' tensors included), plus its own persistent
            # tensors (weights, gradients, Adam moments, batch) as counted after the window.
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(num_steps):
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            self.step_fn(
                self.net_g,
                self.net_d,
                self.opt_g,
                self.opt_d,
                self.real,
                self.noise,
                autocast_dtype=self.autocast_dtype,
            )
        if self.cuda:
            torch.cuda.synchronize()
            self.persistent_bytes = max(self.persistent_bytes, self._own_bytes())
            peak = torch.cuda.max_memory_allocated() - start + self.persistent_bytes
            self.peak_bytes = max(self.peak_bytes or 0, peak)

    def _own_bytes(self) -> int:
        tensors = [self.real, self.noise]
        for net, opt in ((self.net_g, self.opt_g), (self.net_d, self.opt_d)):
            for p in net.parameters():
                tensors.append(p)
                if p.grad is not None:
                    tensors.append(p.grad)
            tensors += [t for s in opt.state.values() for t in s.values() if t.dim() > 0]
        return sum(t.numel() * t.element_size() for t in tensors)

    def peak_memory_bytes(self) -> int | None:
        # CUDA graphs replay in a private memory pool filled while they were recorded, before
        # the timed windows whose allocations are counted here: unknown, not understated.
        return None if self.cuda_graphs else self.peak_bytes

    def reset_peak_memory(self) -> None:
        """Forget the peaks so far: the first steps' include cuDNN's autotuning workspace
        (cudnn.benchmark tries algorithms with gigabytes of scratch), not the step's own."""
        self.peak_bytes = None

    def kernel_ms_per_step(self, num_steps: int = 10) -> float | None:
        """Device time in kernels per step (torch.profiler), None off CUDA: beside the
        step's wall time it shows whether the step is bound by the GPU or by the host
        launching its kernels."""
        if not self.cuda:
            return None
        from torch.profiler import ProfilerActivity, profile

        self.run(2)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            self.run(num_steps)
        total_us = 0.0
        for event in prof.key_averages():
            total_us += getattr(event, "self_device_time_total", None) or getattr(
                event, "self_cuda_time_total", 0.0
            )
        return total_us / 1000 / num_steps

    def device_name(self) -> str:
        if self.cuda:
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


def gemm_gflop_per_s(
    size: int = 2048, repeats: int = 5, torch_side: bool = True, min_window_s: float = 0.05
) -> dict:
    """Each framework's float32 matrix-product rate on this machine: a (size x size) square
    product, in GFLOP/s, the median of `repeats` windows (after a warm-up) of as many
    back-to-back products as fill `min_window_s`: on a GPU one product takes a fraction of
    a millisecond, less than dispatching it and waiting for it, so single products would
    time the host. The ceiling a step made of matrix products could approach."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    flop = 2.0 * size**3

    def rate(product, wait) -> float:
        def window(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                out = product()
            wait(out)
            return time.perf_counter() - start

        window(1)  # compilation, autotuning, first allocations
        count = 1
        while window(count) < min_window_s and count < 1 << 16:
            count *= 2
        times = [window(count) for _ in range(repeats)]
        return flop * count / statistics.median(times) / 1e9

    product = jax.jit(jnp.matmul)
    a_jax, b_jax = jax.device_put(a), jax.device_put(b)
    rates = {"jax": rate(lambda: product(a_jax, b_jax), jax.block_until_ready)}
    if torch_side:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        a_t, b_t = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        rates["torch"] = rate(lambda: torch.mm(a_t, b_t), lambda out: sync())
    return rates


def measure(runner, batch_size: int, steps_per_window: int, timings: dict) -> None:
    """Times one window of `runner` and appends its images/s to `timings[runner.name]`."""
    start = time.perf_counter()
    runner.run(steps_per_window)
    elapsed = time.perf_counter() - start
    timings.setdefault(runner.name, []).append(steps_per_window * batch_size / elapsed)


def _timed_first_step(make_runner) -> tuple[object, float]:
    # A cold start: programs that an earlier case in this process compiled for an equal
    # model (state.py shares them between states) would otherwise be reused.
    train.forget_compiled_programs()
    start = time.perf_counter()
    runner = make_runner()
    runner.run(1)
    return runner, time.perf_counter() - start


def run_benchmark(
    config,
    *,
    windows: int = 7,
    steps_per_window: int = 5,
    torch_side: bool = True,
    torch_compile: bool = False,
    torch_compile_mode: str = "default",
    jax_convolutions: tuple[str, ...] | None = None,
    min_window_s: float = 0.0,
    gemm_size: int = 2048,
) -> dict:
    """Runs the comparison and returns the results as a dict (see `format_table`).

    Args:
      jax_convolutions: time one JAX runner per formulation (`models.FORMULATIONS`), named
        "jax matmul", ...; by default one runner, "jax", with the config's `convolutions`.
      min_window_s: each runner's steps per window are raised until one window lasts at
        least this long (fast accelerator steps would otherwise time Python's dispatch).
      torch_compile_mode: torch.compile's `mode` ("default", "reduce-overhead": CUDA
        graphs, "max-autotune", ...), recorded in the results.
      gemm_size: also measure each framework's float32 GEMM rate on (size x size) squares
        and report each step's share of it (0: skip).
    """
    validate_config(config, jax.local_device_count())
    if windows < 1 or steps_per_window < 1:
        raise UserError("--windows and --steps_per_window must be >= 1.")
    bf16 = bool(config.half_precision)
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.image_size, config.image_size, config.channels)
    batch = rng.uniform(-1, 1, shape).astype(np.float32)

    runners, first_step_s = [], {}
    for convolutions in jax_convolutions or (None,):
        runner, seconds = _timed_first_step(lambda c=convolutions: JaxRunner(config, batch, c))
        first_step_s[runner.name] = seconds
        runners.append(runner)
    if torch_side:
        variants = [False, True] if torch_compile else [False]
        for compiled in variants:
            try:
                runner, seconds = _timed_first_step(
                    lambda c=compiled: TorchRunner(config, batch, bf16, c, torch_compile_mode)
                )
            except Exception as e:  # torch.compile needs a working compiler toolchain
                if not compiled:
                    raise
                print(f"torch.compile unavailable here: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            first_step_s[runner.name] = seconds
            runners.append(runner)

    # One untimed window each (caches, autotuning, thread pools), which also sizes the
    # windows; then alternate.
    window_steps = {}
    for runner in runners:
        start = time.perf_counter()
        runner.run(steps_per_window)
        per_step = (time.perf_counter() - start) / steps_per_window
        window_steps[runner.name] = max(steps_per_window, math.ceil(min_window_s / per_step))
        if hasattr(runner, "reset_peak_memory"):
            runner.reset_peak_memory()
    timings: dict[str, list[float]] = {}
    for _ in range(windows):
        for runner in runners:
            measure(runner, config.batch_size, window_steps[runner.name], timings)

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
        "versions": versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # Both frameworks run in this process, under the same allocator (allocator.py).
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "transparent_huge_pages": allocator.transparent_huge_page_mode(),
        "peak_process_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "frameworks": {},
    }
    for runner in runners:
        rates = timings[runner.name]
        peak_bytes = runner.peak_memory_bytes()
        median = statistics.median(rates)
        results["frameworks"][runner.name] = {
            "device": runner.device_name(),
            "images_per_s": median,
            "images_per_s_windows": rates,
            "steps_per_window": window_steps[runner.name],
            "step_ms": 1000 * config.batch_size / median,
            "first_step_s": first_step_s[runner.name],
            "peak_memory_mib": None if peak_bytes is None else peak_bytes / 2**20,
            "gflop_per_s": median * flops / 1e9,
        }
    frameworks = results["frameworks"]
    if torch_side:
        import torch

        results["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if gemm_size:
        results["gemm_gflop_per_s"] = gemm_gflop_per_s(gemm_size, torch_side=torch_side)
        for name, r in frameworks.items():
            side = "jax" if name.startswith("jax") else "torch"
            r["share_of_gemm"] = r["gflop_per_s"] / results["gemm_gflop_per_s"][side]
    jax_names = [name for name in frameworks if name.startswith("jax")]
    best_jax = max(jax_names, key=lambda name: frameworks[name]["images_per_s"])
    results["jax_images_per_s"] = frameworks[best_jax]["images_per_s"]
    if gemm_size:
        results["jax_share_of_gemm"] = frameworks[best_jax]["share_of_gemm"]
        if "torch" in frameworks:
            results["torch_share_of_gemm"] = frameworks["torch"]["share_of_gemm"]
    if len(jax_names) > 1:
        results["fastest_jax"] = best_jax
    for name in ("torch", "torch.compile"):
        if name not in frameworks:
            continue
        rate = frameworks[name]["images_per_s"]
        if name == "torch":
            results["torch_images_per_s"] = rate
            results["ratio"] = results["jax_images_per_s"] / rate
        else:
            results["torch_compile_images_per_s"] = rate
            results["torch_compile_mode"] = torch_compile_mode
            results["ratio_vs_torch_compile"] = results["jax_images_per_s"] / rate
        for jax_name in jax_names:
            frameworks[jax_name][f"ratio_vs_{name}"] = frameworks[jax_name]["images_per_s"] / rate
    return results


def versions() -> dict[str, str]:
    """Versions of Python, the frameworks and (on CUDA) the GPU stack."""
    found = {"python": platform.python_version(), "jax": jax.__version__}
    for module in ("jaxlib", "flax", "optax"):
        with contextlib.suppress(Exception):
            found[module] = importlib.import_module(module).__version__
    torch = sys.modules.get("torch")
    if torch is not None:
        found["torch"] = torch.__version__
        if torch.cuda.is_available():
            found["torch_cuda"] = str(torch.version.cuda)
            found["cudnn"] = str(torch.backends.cudnn.version())
    with contextlib.suppress(Exception):
        import subprocess

        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True, timeout=10)
        if driver.returncode == 0 and driver.stdout.strip():
            found["nvidia_driver"] = driver.stdout.strip().splitlines()[0]
    return found


def format_table(results: dict) -> str:
    """The results as a fixed-width text table."""
    lines = [
        f"DCGAN training step, batch {results['batch_size']}, {results['precision']}, "
        f"{results['config']['image_size']}x{results['config']['image_size']}"
        f"x{results['config']['channels']}, "
        f"{results['step_gflop_per_image']:.2f} GFLOP/image/step; host CPU: {results['host_cpu']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        f"GLIBC_TUNABLES (both frameworks): {results.get('glibc_tunables') or 'unset'}; "
        f"transparent huge pages: {results.get('transparent_huge_pages') or 'n/a'}",
        f"{'':14} {'images/s':>10} {'step ms':>9} {'1st step s':>10} {'GFLOP/s':>9} "
        f"{'peak MiB':>9}  device",
    ]
    for name, r in results["frameworks"].items():
        peak = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        lines.append(
            f"{name:14} {r['images_per_s']:10.1f} {r['step_ms']:9.1f} {r['first_step_s']:10.1f} "
            f"{r['gflop_per_s']:9.1f} {peak:>9}  {r['device']}"
        )
    jax_name = results.get("fastest_jax", "JAX")
    if "ratio" in results:
        lines.append(f"{jax_name} / PyTorch eager: {results['ratio']:.2f}x images/s")
    if "ratio_vs_torch_compile" in results:
        lines.append(
            f"{jax_name} / torch.compile ({results.get('torch_compile_mode', 'default')}): "
            f"{results['ratio_vs_torch_compile']:.2f}x images/s"
        )
    if "gemm_gflop_per_s" in results:
        gemm = results["gemm_gflop_per_s"]
        lines.append(
            "fp32 GEMM rate here (2048^2 squares): "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items())
            + "; share of it reached by each step: "
            + ", ".join(f"{n} {r['share_of_gemm']:.0%}" for n, r in results["frameworks"].items())
        )
    lines.append(
        f"medians of {results['windows']} alternating windows of at least "
        f"{results['steps_per_window']} steps; process peak RSS "
        f"{results['peak_process_rss_mib']:.0f} MiB"
    )
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    xla_flags.apply_defaults()
    allocator.dispatch_in_calling_thread()
    f = flags.FLAGS
    # JAX would take 75% of an accelerator's memory at start-up, leaving PyTorch (in the
    # same process) the rest and making JAX's own footprint unreadable.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if f.suite:
        from dcgan_jax import benchmark_suite

        benchmark_suite.main(f)
        return
    if f.config is None:
        raise app.UsageError("--config is required (or --suite --out DIR)")
    config = f.config
    with config.unlocked():
        if f.precision is not None:
            if f.precision not in ("fp32", "bf16"):
                raise app.UsageError("--precision must be fp32 or bf16")
            config.half_precision = f.precision == "bf16"
    if f.sweep:
        from dcgan_jax import sweep

        if not f.out:
            raise app.UsageError("--sweep needs --out DIR for sweep.json and sweep.png")
        try:
            batch_sizes = [int(b) for b in f.batch_sizes]
            image_sizes = [int(s) for s in f.image_sizes]
        except ValueError as e:
            raise app.UsageError(f"--batch_sizes and --image_sizes take integers: {e}") from e
        with exit_on_user_error():
            for size in image_sizes:
                with config.unlocked():
                    config.image_size = size
                validate_config(config, jax.local_device_count())
            sweep.run_sweep(
                config,
                f.out,
                batch_sizes=batch_sizes,
                image_sizes=image_sizes,
                windows=f.windows,
                steps_per_window=f.steps_per_window,
                torch_side=not f.no_torch,
            )
        return
    if f.profile:
        from dcgan_jax import step_profile

        with exit_on_user_error():
            validate_config(config, jax.local_device_count())
            print(
                step_profile.format_profile(step_profile.profile(config, torch_side=not f.no_torch))
            )
        return
    if f.torch_compile_mode != "default" and not f.torch_compile:
        raise app.UsageError("--torch_compile_mode needs --torch_compile.")
    with exit_on_user_error():
        results = run_benchmark(
            config,
            windows=f.windows,
            steps_per_window=f.steps_per_window,
            torch_side=not f.no_torch,
            torch_compile=f.torch_compile,
            torch_compile_mode=f.torch_compile_mode,
            min_window_s=f.min_window_s,
        )
    print(format_table(results))
    if f.json:
        with open(f.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar.py.")
    flags.DEFINE_string("precision", None, "fp32 or bf16 (default: the config's).")
    flags.DEFINE_integer("windows", 7, "Timed windows per framework.")
    flags.DEFINE_integer("steps_per_window", 5, "Training steps per timed window.")
    flags.DEFINE_bool("torch_compile", False, "Also time the reference under torch.compile.")
    flags.DEFINE_enum(
        "torch_compile_mode",
        "default",
        ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        "--torch_compile: torch.compile's mode (reduce-overhead: CUDA graphs).",
    )
    flags.DEFINE_float(
        "min_window_s",
        0.0,
        "Raise each side's steps per window until a window lasts this long (on a GPU, "
        "0.2 keeps Python's dispatch out of the timing).",
    )
    flags.DEFINE_bool("no_torch", False, "Time only the JAX side (no PyTorch needed).")
    flags.DEFINE_string("json", None, "Also write the results as JSON to this path.")
    flags.DEFINE_bool("sweep", False, "Measure over --batch_sizes x --image_sizes (see sweep.py).")
    flags.DEFINE_list("batch_sizes", ["16", "64", "256"], "--sweep: global batch sizes.")
    flags.DEFINE_list("image_sizes", ["32", "64", "128"], "--sweep: image sizes.")
    flags.DEFINE_bool("profile", False, "Print where a step's time goes, phase by phase.")
    flags.DEFINE_bool("suite", False, "Run the accelerator suite (see benchmark_suite.py).")
    flags.DEFINE_string("out", None, "--suite: the directory for suite.json and suite.md.")
    flags.DEFINE_float("suite_budget_s", 480.0, "--suite: start no speed case after this.")
    flags.DEFINE_bool("suite_tiny", False, "--suite: tiny models and batches (a CPU dry run).")
    flags.DEFINE_list("suite_configs", ["cifar", "celeba"], "--suite: models to time.")
    flags.DEFINE_list("suite_batch_sizes", ["64", "256"], "--suite: batch sizes to time.")
    flags.DEFINE_list("suite_precisions", ["fp32", "bf16"], "--suite: precisions to time.")
    flags.DEFINE_bool("suite_parity", True, "--suite: measure parity first.")
    flags.DEFINE_bool(
        "suite_diagnose",
        False,
        "--suite: also per-tensor gradient errors against float64 and PyTorch's kernel time.",
    )
    from dcgan_jax.validation import parse_flags

    app.run(main, flags_parser=parse_flags)
