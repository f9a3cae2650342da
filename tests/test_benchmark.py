import json
import os
import subprocess

import pytest

from dcgan_jax import benchmark, models
from tests import commands
from tests.conftest import tiny_config


def test_step_flops_match_the_issue_estimate_for_cifar():
    from tests.test_models import _load_config

    # 3 x G forward + 8 x D forward; G forward is 0.546 GFLOP/image for the cifar model.
    g, d = benchmark.forward_flops_per_image(_load_config("cifar"))
    assert g == 2 * (
        100 * 16 * 1024 + 64 * 512 * 1024 * 4 + 256 * 256 * 512 * 4 + 1024 * 3 * 256 * 4
    )
    assert benchmark.step_flops_per_image(_load_config("cifar")) == 3 * g + 8 * d


@pytest.mark.slow
def test_benchmark_runs_both_sides_and_reports():
    pytest.importorskip("torch")
    config = tiny_config(batch_size=4)
    results = benchmark.run_benchmark(config, windows=2, steps_per_window=1)
    for key in ("jax_images_per_s", "torch_images_per_s", "ratio"):
        assert results[key] > 0
    assert results["ratio"] == pytest.approx(
        results["jax_images_per_s"] / results["torch_images_per_s"]
    )
    assert len(results["frameworks"]["jax"]["images_per_s_windows"]) == 2
    # Each framework's GEMM rate, and the share of it each step reaches.
    assert set(results["gemm_gflop_per_s"]) == {"jax", "torch"}
    # TF32 for PyTorch's float32 products is set on CUDA only; the CPU keeps full float32.
    assert results["torch_float32_matmul_precision"] == "highest"
    for side in ("jax", "torch"):
        share = results[f"{side}_share_of_gemm"]
        rate = results["frameworks"][side]["gflop_per_s"]
        assert share == pytest.approx(rate / results["gemm_gflop_per_s"][side])
    table = benchmark.format_table(results)
    assert "JAX / PyTorch eager:" in table and "images/s" in table


def test_benchmark_cli_writes_json_without_tensorflow(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "bench.json"
    # Importing TensorFlow or TFDS fails inside this process: the benchmark must not need them.
    command = commands.without_tensorflow(
        "dcgan_jax.benchmark",
        f"--config={os.path.join(repo, 'configs', 'digits.py')}",
        "--config.g_features=8",
        "--config.d_features=8",
        "--config.batch_size=8",
        "--windows=1",
        "--steps_per_window=1",
        "--no_torch",
        f"--json={out}",
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images/s" in result.stdout
    data = json.loads(out.read_text())
    assert data["jax_images_per_s"] > 0 and data["batch_size"] == 8
    # The results record the XLA flags it ran with (the session's, holding the defaults).
    assert data["xla_flags"].split() == os.environ["XLA_FLAGS"].split()
    # And the allocator both frameworks ran under (the session's GLIBC_TUNABLES, conftest.py).
    assert data["glibc_tunables"] == os.environ.get("GLIBC_TUNABLES", "")


def test_torch_step_autocasts_the_forward_passes_only_and_never_syncs():
    torch = pytest.importorskip("torch")
    from dcgan_jax import torch_reference

    config = tiny_config(batch_size=4)
    net_g, net_d, opt_g, opt_d = torch_reference.build(config)
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    noise = torch.randn(4, config.z_dim)
    metrics = torch_reference.train_step(
        net_g, net_d, opt_g, opt_d, real, noise, autocast_dtype=torch.bfloat16
    )
    # Tensors (no .item() per metric); the losses were taken of float32 probabilities.
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in metrics.values())
    floats = torch_reference.metrics_to_floats(metrics)
    assert set(floats) == set(metrics) and all(isinstance(v, float) for v in floats.values())


@pytest.mark.slow
def test_suite_dry_run_writes_json_and_tables(tmp_path):
    pytest.importorskip("torch")
    from dcgan_jax import benchmark_suite

    results = benchmark_suite.run_suite(
        str(tmp_path),
        tiny=True,
        configs=("cifar",),
        batch_sizes=(32,),
        precisions=("fp32",),
        with_parity=False,
        windows=1,
    )
    (case,) = results["speed"]
    assert set(case["frameworks"]) == {f"jax {c}" for c in models.FORMULATIONS} | {"torch"}
    assert case["batch_size"] == 2 and case["model"]["image_size"] == 32
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["speed"][0]["frameworks"]["torch"]["images_per_s"] > 0
    table = (tmp_path / "suite.md").read_text()
    assert "| cifar | 2 | fp32 | jax lax |" in table and "Versions:" in table
    assert "parity:" not in table  # no empty parity table when parity was not measured


def _suite_results(parity=(), speed=()) -> dict:
    """A suite results dict around the given parity rows and speed cases."""
    return {
        "device": "gpu:0",
        "host_cpu": "cpu",
        "versions": {"jax": "x"},
        "parity": list(parity),
        "speed": list(speed),
    }


def test_suite_parity_table_keeps_its_columns_when_a_measurement_fails():
    from dcgan_jax import benchmark_suite

    measured = {
        "forward_g": 1e-6,
        "forward_d": 2e-7,
        "metrics": 3e-6,
        "gradients": 4e-6,
        "params_in_lr": 0.5,
        "forward_holds_1e-5": True,
        "gradients_hold_1e-4": True,
    }
    half = {
        "worst_jax": 5e-3,
        "worst_torch": 6e-6,
        "holds": False,
        "over_bound": ["G.main.0.weight"],
        "kink_distance": 2e-8,
    }
    head = {"config": "cifar", "convolutions": "lax", "precision": "highest"}
    results = _suite_results(
        parity=[
            {**head, **measured, "half_step": half},
            {**head, "error": "RuntimeError: a", "half_step": half},
            {**head, **measured, "half_step": {"error": "ValueError: b"}},
        ]
    )
    table = benchmark_suite.format_tables(results).splitlines()
    lines = [line for line in table if "| cifar" in line]
    header = next(line for line in table if "parity:" in line)
    assert len(lines) == 3 and all(line.count("|") == header.count("|") for line in lines)
    assert "| 5.0e-03 / 6.0e-06 | G.main.0.weight | 2.0e-08 |" in lines[0]
    assert "error: RuntimeError: a" in lines[1] and "5.0e-03 / 6.0e-06" in lines[1]
    assert "| 4.0e-06 |" in lines[2] and "error: ValueError: b" in lines[2]


def test_suite_table_says_where_torch_compile_was_left_out():
    from dcgan_jax import benchmark_suite

    runner = {"images_per_s": 100.0, "step_ms": 10.0, "first_step_s": 1.0, "peak_memory_mib": 5}
    head = {"batch_size": 256, "precision": "fp32", "frameworks": {"jax matmul": runner}}
    results = _suite_results(
        speed=[
            {"config": "cifar", **head},
            {"config": "celeba", **head, "torch_compile_left_out": "started after 60% of ..."},
        ]
    )
    table = benchmark_suite.format_tables(results)
    assert "torch.compile left out of celeba batch 256 fp32:" in table
    assert "cifar batch 256" not in table and "parity:" not in table


@pytest.mark.slow
def test_profile_splits_both_steps_into_the_same_phases():
    pytest.importorskip("torch")
    from dcgan_jax import step_profile

    results = step_profile.profile(tiny_config(batch_size=4), repeats=2)
    for side in ("jax", "torch"):
        times = results[side]
        assert set(times) == {*step_profile.PHASES, "rest", "step"}
        assert times["step"] > 0 and times["G forward"] > 0
        assert sum(times[p] for p in step_profile.PHASES) + times["rest"] == pytest.approx(
            times["step"]
        )
    table = step_profile.format_profile(results)
    assert "backward through D and G" in table and "jax/torch" in table


@pytest.mark.slow
def test_sweep_writes_json_table_and_plot(tmp_path):
    pytest.importorskip("torch")
    from PIL import Image

    from dcgan_jax import sweep

    results = sweep.run_sweep(
        tiny_config(),
        str(tmp_path),
        batch_sizes=(2, 4),
        image_sizes=(16, 32),
        windows=1,
        steps_per_window=1,
    )
    assert [(p["image_size"], p["batch_size"]) for p in results["points"]] == [
        (16, 2),
        (16, 4),
        (32, 2),
        (32, 4),
    ]
    assert all(
        p["jax"]["images_per_s"] > 0 and p["torch"]["images_per_s"] > 0 for p in results["points"]
    )
    assert json.loads((tmp_path / "sweep.json").read_text())["points"] == results["points"]
    with Image.open(tmp_path / "sweep.png") as image:
        assert image.size == (800, 520)
        assert len(image.getcolors(1 << 16)) > 3  # lines drawn, not a blank canvas
    assert "| 32 | 4 |" in sweep.format_sweep(results)
