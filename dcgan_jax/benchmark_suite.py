"""Everything worth knowing about one accelerator, measured in one command.

    python -m dcgan_jax.benchmark --suite --out DIR [--suite_budget_s 480] [--suite_tiny]
        [--torch_compile_mode reduce-overhead]

1. versions and devices;
2. parity with the PyTorch reference on the device: forward passes and one training step
   from the same weights, for each convolution formulation, with TF32 off on both sides
   ("highest") and, for CIFAR-10, at each framework's default precision (TF32 on Ampere and
   later GPUs); and each half-step of that step from identical inputs, both sides'
   gradients against float64 (parity.half_step_errors: the CPU tests' bound);
3. speed: configs/cifar.py and configs/celeba.py at batch 64 and 256, fp32 and bf16; JAX
   with each convolution formulation (`models.FORMULATIONS`; "winograd" adds the most
   compile time) against
   PyTorch eager and (on CUDA, or with --torch_compile) torch.compile in
   `--torch_compile_mode` (`reduce-overhead`: CUDA graphs): images/s, step ms, first-step
   time, each side's peak device memory;
4. DIR/suite.json and DIR/suite.md, rewritten after every case, so that a run cut short
   keeps what it measured; cases that would start after `--suite_budget_s` are listed as
   skipped, and torch.compile is left out of cases that start after 60% of it.

fp32 speed runs use TF32 matrix units on both sides (XLA's default for float32 dots and
convolutions on GPUs, cuDNN's default for PyTorch's convolutions; PyTorch's float32 matrix
products are set to match). `--suite_tiny` shrinks the models and batches so that the
whole suite runs on a CPU in a minute or two, as a dry run.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import jax

from dcgan_jax import benchmark, default_config, models, parity, torch_reference

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = ("cifar", "celeba")


def suite_configs(tiny: bool) -> dict:
    configs = {}
    for name in CONFIGS:
        config = default_config.load_config_file(os.path.join(CONFIG_DIR, f"{name}.py"))
        if tiny:
            config.g_features = config.d_features = 4
            config.z_dim = 8
        configs[name] = config
    return configs


def _describe_devices() -> list[str]:
    return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.local_devices()]


def _write(out_dir: str, results: dict) -> None:
    with open(os.path.join(out_dir, "suite.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, "suite.md"), "w") as f:
        f.write(format_tables(results) + "\n")


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_tables(results: dict) -> str:
    """The suite's results as Markdown tables (parity, then speed)."""
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    lines = [
        f"Device: {results['device']}; host CPU: {results['host_cpu']}",
        f"Versions: {versions}",
    ]
    if results["parity"]:
        lines += [
            "",
            "| parity: config | convolutions | precision | G fwd | D fwd | metrics | gradients "
            "| params (lr) | fwd <= 1e-5 | grads <= 1e-4 | half-step vs float64: JAX / PyTorch "
            "| within the tests' bound | kink distance |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for row in results["parity"]:
        if "error" in row:  # measure's 7 columns
            whole = f"error: {row['error']} ||||||"
        else:
            whole = (
                f"{row['forward_g']:.1e} | {row['forward_d']:.1e} | {row['metrics']:.1e} "
                f"| {row['gradients']:.1e} | {row['params_in_lr']:.2g} "
                f"| {row['forward_holds_1e-5']} | {row['gradients_hold_1e-4']}"
            )
        half = row.get("half_step", {"error": "not measured"})
        if "error" in half:  # half_step_errors' 3 columns
            halves = f"error: {half['error']} ||"
        else:
            halves = (
                f"{half['worst_jax']:.1e} / {half['worst_torch']:.1e} "
                f"| {half['holds'] or ', '.join(half['over_bound'])} "
                f"| {half['kink_distance']:.1e}"
            )
        lines.append(
            f"| {row['config']} | {row['convolutions']} | {row['precision']} | {whole} | {halves} |"
        )
    lines += [
        "",
        "| config | batch | precision | runner | images/s | step ms | 1st step s | peak MiB "
        f"| vs torch | vs torch.compile ({results.get('torch_compile_mode', 'default')}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in results["speed"]:
        head = f"| {case['config']} | {case['batch_size']} | {case['precision']}"
        if "error" in case or "skipped" in case:
            lines.append(f"{head} | {case.get('error') or case['skipped']} ||||||")
            continue
        for name, r in case["frameworks"].items():
            lines.append(
                f"{head} | {name} | {r['images_per_s']:.0f} | {r['step_ms']:.2f} "
                f"| {r['first_step_s']:.1f} | {_fmt(r['peak_memory_mib'], '.0f')} "
                f"| {_fmt(r.get('ratio_vs_torch'), '.2f')} "
                f"| {_fmt(r.get('ratio_vs_torch.compile'), '.2f')} |"
            )
    left_out = [
        f"{case['config']} batch {case['batch_size']} {case['precision']}"
        for case in results["speed"]
        if "torch_compile_left_out" in case and "frameworks" in case
    ]
    if left_out:
        lines += [
            "",
            f"torch.compile left out of {', '.join(left_out)}: those cases started after 60% "
            "of the suite's budget (a larger --suite_budget_s includes them).",
        ]
    return "\n".join(lines)


def _diagnose(results: dict, config, tiny: bool) -> None:
    """Where parity is lost (per-tensor errors against float64) and what bounds PyTorch's
    step (its kernel time beside its wall time)."""
    t0 = time.perf_counter()
    try:
        errors = parity.float64_gradient_errors(
            default_config.with_overrides(config, batch_size=2 if tiny else 32)
        )
        results["float64_gradient_errors"] = errors
        for side, by_tensor in errors.items():
            worst = sorted(by_tensor.items(), key=lambda kv: -kv[1])[:4]
            print(f"vs float64, {side}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst))
    except Exception as e:
        results["float64_gradient_errors"] = f"{type(e).__name__}: {str(e)[:300]}"
        traceback.print_exc()
    print(f"float64 comparison took {time.perf_counter() - t0:.0f} s", flush=True)
    try:
        import numpy as np

        profile = {}
        for batch_size in (4, 8) if tiny else (64, 256):
            cfg = default_config.with_overrides(config, batch_size=batch_size)
            batch = np.random.default_rng(0).uniform(
                -1, 1, (batch_size, cfg.image_size, cfg.image_size, cfg.channels)
            )
            runner = benchmark.TorchRunner(cfg, batch.astype(np.float32), False, False)
            runner.run(5)
            start = time.perf_counter()
            runner.run(20)
            wall_ms = (time.perf_counter() - start) * 1000 / 20
            profile[str(batch_size)] = {
                "wall_ms_per_step": wall_ms,
                "kernel_ms_per_step": runner.kernel_ms_per_step(),
            }
            print(f"torch eager cifar batch {batch_size}: {profile[str(batch_size)]}")
        results["torch_kernel_time"] = profile
    except Exception as e:
        results["torch_kernel_time"] = f"{type(e).__name__}: {str(e)[:300]}"
        traceback.print_exc()


def run_suite(
    out_dir: str,
    *,
    tiny: bool = False,
    budget_s: float = 480.0,
    batch_sizes: tuple[int, ...] = (64, 256),
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    torch_compile: bool | None = None,
    torch_compile_mode: str = "default",
    windows: int = 5,
    configs: tuple[str, ...] = CONFIGS,
    with_parity: bool = True,
    diagnose: bool = False,
) -> dict:
    """Runs the suite, writing DIR/suite.json and DIR/suite.md as it goes; returns the
    results. `torch_compile=None` times torch.compile where CUDA is available."""
    import torch

    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    cuda = torch.cuda.is_available()
    if torch_compile is None:
        torch_compile = cuda
    if tiny:
        batch_sizes = tuple(max(2, b // 16) for b in batch_sizes)
    # fp32 speed: TF32 on both sides (see the module docstring).
    torch_reference.use_tf32_for_speed()
    names, configs = configs, suite_configs(tiny)
    results = {
        "device": ", ".join(_describe_devices()),
        "host_cpu": benchmark._cpu_name(),
        "versions": {},
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "fp32_math": "tf32 on both sides (each framework's GPU default; torch matmuls 'high')",
        "budget_s": budget_s,
        "torch_compile_mode": torch_compile_mode,
        "parity": [],
        "speed": [],
    }
    torch.zeros(1, device="cuda" if cuda else "cpu")  # initialise CUDA before versions()
    results["versions"] = benchmark.versions()
    print(f"devices: {results['device']}", flush=True)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    _write(out_dir, results)

    parity_cases = [(name, conv, "highest") for name in CONFIGS for conv in models.FORMULATIONS]
    parity_cases += [("cifar", conv, "default") for conv in models.FORMULATIONS]
    if not with_parity:
        parity_cases = []
    for name, conv, precision in parity_cases:
        row = {"config": name, "convolutions": conv, "precision": precision}
        t0 = time.perf_counter()
        try:
            config = default_config.with_overrides(
                configs[name], batch_size=max(2, 32 // (16 if tiny else 1))
            )
            row.update(parity.measure(config, conv, precision))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
        try:
            row["half_step"] = parity.half_step_errors(config, conv, precision)
        except Exception as e:
            row["half_step"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            traceback.print_exc()
        row["seconds"] = time.perf_counter() - t0
        results["parity"].append(row)
        print(
            f"parity {name} {conv} {precision}: "
            + ", ".join(
                f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in row.items()
                if k not in ("config", "convolutions", "precision", "half_step")
            ),
            flush=True,
        )
        half = row["half_step"]
        if "error" not in half:
            worst = sorted(half["jax"].items(), key=lambda kv: -kv[1])[:3]
            print(
                f"  half-steps vs float64: JAX {half['worst_jax']:.1e}, PyTorch "
                f"{half['worst_torch']:.1e}; within the tests' bound: {half['holds']} "
                f"{half['over_bound']}; kink distance {half['kink_distance']:.1e}; JAX's worst: "
                + ", ".join(f"{k} {v:.1e}" for k, v in worst),
                flush=True,
            )
        _write(out_dir, results)

    if diagnose:
        _diagnose(results, configs["cifar"], tiny)
        _write(out_dir, results)

    for batch_size in batch_sizes:
        for name in names:
            for precision in precisions:
                case = {"config": name, "batch_size": batch_size, "precision": precision}
                elapsed = time.perf_counter() - start
                if elapsed > budget_s:
                    case["skipped"] = f"skipped: budget of {budget_s:.0f} s spent"
                    results["speed"].append(case)
                    continue
                # torch.compile takes tens of seconds per shape: only while less than 60%
                # of the budget is spent (said in the case and under the table).
                with_compile = torch_compile and elapsed < 0.6 * budget_s
                if torch_compile and not with_compile:
                    case["torch_compile_left_out"] = (
                        f"started after 60% of --suite_budget_s={budget_s:.0f}"
                    )
                t0 = time.perf_counter()
                try:
                    config = default_config.with_overrides(
                        configs[name], batch_size=batch_size, half_precision=precision == "bf16"
                    )
                    measured = benchmark.run_benchmark(
                        config,
                        windows=windows,
                        steps_per_window=1 if tiny else 3,
                        torch_compile=with_compile,
                        torch_compile_mode=torch_compile_mode,
                        jax_convolutions=models.FORMULATIONS,
                        min_window_s=0.0 if tiny else 0.2,
                    )
                    measured["model"] = measured.pop("config")
                    case.update(measured)
                except Exception as e:
                    case["error"] = f"error: {type(e).__name__}: {str(e)[:300]}"
                    traceback.print_exc()
                case["seconds"] = time.perf_counter() - t0
                results["speed"].append(case)
                summary = ", ".join(
                    f"{runner} {r['images_per_s']:.0f}/s"
                    for runner, r in case.get("frameworks", {}).items()
                )
                print(
                    f"[{time.perf_counter() - start:5.0f} s] {name} batch {batch_size} "
                    f"{precision}: {summary or case.get('error')}",
                    flush=True,
                )
                _write(out_dir, results)
    results["total_s"] = time.perf_counter() - start
    _write(out_dir, results)
    print(format_tables(results))
    return results


def main(f) -> None:
    """`python -m dcgan_jax.benchmark --suite ...` with benchmark.py's flags `f`."""
    if not f.out:
        print("error: --suite needs --out DIR for its results.", file=sys.stderr)
        sys.exit(2)
    unknown = sorted(set(f.suite_configs) - set(CONFIGS))
    bad_precisions = sorted(set(f.suite_precisions) - {"fp32", "bf16"})
    if (
        unknown
        or bad_precisions
        or not all(b.isdigit() and int(b) > 0 for b in f.suite_batch_sizes)
    ):
        print(
            f"error: --suite_configs takes {', '.join(CONFIGS)}, --suite_precisions fp32 and "
            "bf16, --suite_batch_sizes positive integers (comma-separated).",
            file=sys.stderr,
        )
        sys.exit(2)
    run_suite(
        f.out,
        tiny=f.suite_tiny,
        budget_s=f.suite_budget_s,
        configs=tuple(f.suite_configs),
        batch_sizes=tuple(int(b) for b in f.suite_batch_sizes),
        precisions=tuple(f.suite_precisions),
        torch_compile=f.torch_compile or None,
        torch_compile_mode=f.torch_compile_mode,
        with_parity=f.suite_parity,
        diagnose=f.suite_diagnose,
    )
