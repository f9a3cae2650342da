"""Whole-run quality: dcgan_jax against the PyTorch reference, on real digits, offline.

    python -m dcgan_jax.compare --config configs/digits.py --seeds 5 --steps 3000 --out DIR

float32 GAN training is chaotic, so two runs never end in the same generator; what a user
switching from the PyTorch DCGAN needs is equal quality at equal steps, across seeds. For
each seed this trains the PyTorch reference loop (`torch_reference`: PyTorch's
initialisation, pytorch/examples' step) and dcgan_jax (its own initialisation, `steps`)
with the same hyper-parameters on the same batches in the same order (a seeded permutation
of the 1,797 digits each epoch), and every `--eval_every` steps scores both generators on
the same latent vectors with the digits feature network (`digits_features`): FDD against
the classifier's training half and the digits Inception Score, each with BatchNorm in
inference mode (running averages; the default of `sample` and `evaluate`) and in training
mode (statistics of each sampled batch of `batch_size`, as pytorch/examples draws its
grids). With `--config.ema_decay > 0` the JAX run's EMA generator is scored too: with
the live generator's running statistics, with batch statistics, and with standing
statistics of its own (what sampling uses; `sampling.standing_statistics`).

Writes DIR/compare.json (every seed's curves, the floor, the ceiling and the final-step
test) and DIR/compare.png (FDD against steps, mean and min-max band over seeds per
framework), and prints a table.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from dcgan_jax import digits_features, models, sampling, steps, xla_flags
from dcgan_jax.state import create_state
from dcgan_jax.validation import UserError, exit_on_user_error

FRAMEWORKS = ("jax", "torch")
# Latent vectors of the evaluations: drawn from this seed and the run's, shared by both
# frameworks so that they are scored on the same inputs.
_EVAL_NOISE_STREAM = 1


def batch_indices(num_examples: int, batch_size: int, seed: int):
    """Indices of the training batches: each epoch a permutation of all examples drawn
    from (seed, epoch), cut into full batches (the remainder is dropped)."""
    for epoch in itertools.count():
        order = np.random.default_rng([seed, epoch]).permutation(num_examples)
        for start in range(0, num_examples - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


class JaxRun:
    """dcgan_jax's state and jitted step on one device."""

    def __init__(self, config, seed: int):
        self.config = config.copy_and_resolve_references()
        with self.config.unlocked():
            self.config.seed = seed
        # One device, no pmap: modules without a cross-device axis.
        self.state = create_state(self.config, *models.make_models(self.config))
        update_ema, warmup = self.config.ema_decay > 0, self.config.ema_warmup
        self._step = jax.jit(
            lambda s, x: steps.train_step(s, x, update_ema=update_ema, ema_warmup=warmup)
        )

    def train_step(self, real: np.ndarray) -> None:
        self.state, _ = self._step(self.state, real)

    def generators(self) -> dict[str, object]:
        gens = {"": self.state.generator}
        if self.state.keeps_ema:
            ema = self.state.sampling_generator()  # with the live generator's statistics
            gens["ema_"] = ema
            stats = sampling.standing_statistics(ema, self.config.z_dim, self.config.batch_size)
            gens["ema_standing_"] = ema.replace(batch_stats=stats)
        return gens

    def sample(self, generator, z: np.ndarray, batch_stats: bool, batch_size: int):
        variables = sampling.eval_variables(generator)
        return np.concatenate(
            [
                np.asarray(
                    sampling.generate_eval(generator, z[i : i + batch_size], variables, batch_stats)
                )
                for i in range(0, len(z), batch_size)
            ]
        )


class TorchRun:
    """The reference networks, optimisers and step (pytorch/examples), on the CPU."""

    def __init__(self, config, seed: int):
        from dcgan_jax import torch_reference

        self._torch = torch_reference._torch()
        self._reference = torch_reference
        self.net_g, self.net_d, self.opt_g, self.opt_d = torch_reference.build(config, seed)
        self._batch, self._z_dim = config.batch_size, config.z_dim

    def train_step(self, real: np.ndarray) -> None:
        torch = self._torch
        real = torch.from_numpy(np.ascontiguousarray(real.transpose(0, 3, 1, 2)))
        noise = torch.randn(self._batch, self._z_dim, 1, 1)
        self._reference.train_step(self.net_g, self.net_d, self.opt_g, self.opt_d, real, noise)

    def generators(self) -> dict[str, object]:
        return {"": self.net_g}

    def sample(self, net_g, z: np.ndarray, batch_stats: bool, batch_size: int):
        torch = self._torch
        # Training-mode BatchNorm updates the running averages even without gradients:
        # keep them as they were, as the JAX side does.
        saved = copy.deepcopy(net_g.state_dict())
        net_g.train(batch_stats)
        out = []
        with torch.no_grad():
            for i in range(0, len(z), batch_size):
                chunk = torch.from_numpy(z[i : i + batch_size]).reshape(-1, z.shape[1], 1, 1)
                out.append(net_g(chunk).permute(0, 2, 3, 1).numpy())
        net_g.load_state_dict(saved)
        net_g.train()
        return np.concatenate(out)


def evaluation_steps(num_steps: int, every: int) -> list[int]:
    return sorted({0, num_steps, *range(every, num_steps, every)})


def score(run, evaluation, z: np.ndarray, batch_size: int) -> dict[str, float]:
    """FDD and IS of each of the run's generators, with BatchNorm in both modes."""
    results = {}
    for prefix, generator in run.generators().items():
        for mode, batch_stats in (("", False), ("batch_bn_", True)):
            if prefix == "ema_standing_" and batch_stats:
                continue  # the same as "ema_" with batch statistics
            images = sampling.quantize(run.sample(generator, z, batch_stats, batch_size))
            scores = evaluation.fdd_and_is(images)
            results[f"{prefix}{mode}fdd"] = scores["fdd"]
            results[f"{prefix}{mode}is"] = scores["is"]
    return results


def permutation_test(a, b, max_exact: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value of the difference of means of samples `a` and `b` under random
    relabelling: exact (every split) when there are at most `max_exact` splits, else from
    that many random permutations. Makes no normality assumption (5 seeds each give 252
    splits, so p >= 1/126 can be resolved)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    n, k = len(pooled), len(a)
    if math.comb(n, k) <= max_exact:
        splits = (list(c) for c in itertools.combinations(range(n), k))
    else:
        rng = np.random.default_rng(seed)
        splits = (rng.permutation(n)[:k] for _ in range(max_exact))
    extreme = total = 0
    for chosen in splits:
        mask = np.zeros(n, bool)
        mask[chosen] = True
        diff = abs(pooled[mask].mean() - pooled[~mask].mean())
        extreme += diff >= observed - 1e-12
        total += 1
    return extreme / total


def final_comparison(jax_values, torch_values) -> dict[str, float]:
    """Means, standard deviations, the difference of means (JAX - PyTorch) in pooled
    standard deviations, and the permutation test's p-value."""
    a, b = np.asarray(jax_values, np.float64), np.asarray(torch_values, np.float64)
    result = {"jax_mean": a.mean(), "torch_mean": b.mean()}
    result["jax_std"] = a.std(ddof=1) if len(a) > 1 else 0.0
    result["torch_std"] = b.std(ddof=1) if len(b) > 1 else 0.0
    pooled = math.sqrt((result["jax_std"] ** 2 + result["torch_std"] ** 2) / 2)
    result["difference_in_pooled_sd"] = (a.mean() - b.mean()) / pooled if pooled > 0 else 0.0
    result["p_value"] = permutation_test(a, b)
    return {k: float(v) for k, v in result.items()}


def run_compare(
    config,
    out_dir: str,
    num_seeds: int,
    num_steps: int,
    eval_every: int,
    num_samples: int | None = None,
    log=print,
    frameworks=FRAMEWORKS,
) -> dict:
    """Trains each framework for every seed, scores them, writes compare.json/.png (the
    final-step test needs both frameworks; one alone measures, e.g., the EMA variants)."""
    if not frameworks or set(frameworks) - set(FRAMEWORKS):
        raise UserError(f"--frameworks must name jax and/or torch, got {list(frameworks)}.")
    if config.dataset != "digits":
        raise UserError(
            f"compare measures quality with the digits feature network, so it needs the "
            f"digits dataset, not {config.dataset!r}. Fix: --config configs/digits.py."
        )
    for name, value, low in (("--seeds", num_seeds, 1), ("--steps", num_steps, 1)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}.")
    if eval_every < 1:
        raise UserError(f"--eval_every must be at least 1, got {eval_every}.")
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    evaluation = digits_features.DigitsEvaluation(
        config, os.path.join(os.path.expanduser("~"), ".cache", "dcgan_jax")
    )
    num_samples = num_samples or len(evaluation.held_out_images)
    if num_samples < 2:
        raise UserError(f"--num_samples must be at least 2, got {num_samples}.")
    images = evaluation.images  # all 1,797, as training reads them
    eval_steps = evaluation_steps(num_steps, eval_every)
    results = {
        "feature_network": digits_features.NAME,
        "classifier_held_out_accuracy": evaluation.held_out_accuracy,
        "floor": evaluation.floor(),
        "num_samples": num_samples,
        "num_reference": len(evaluation.train_images),
        "steps": eval_steps,
        "seeds": list(range(num_seeds)),
        "config": {
            k: config[k]
            for k in (
                *("image_size", "batch_size", "learning_rate", "beta1", "beta2", "z_dim"),
                *("g_features", "d_features", "d_head", "ema_decay"),
            )
        },
        **{framework: {} for framework in frameworks},
    }
    log(
        f"digits feature network {digits_features.NAME}: held-out accuracy "
        f"{evaluation.held_out_accuracy:.2%}; floor (held-out real digits) FDD "
        f"{results['floor']['fdd']:.2f}"
    )
    runners = {"jax": JaxRun, "torch": TorchRun}
    for seed in range(num_seeds):
        z = np.random.default_rng([seed, _EVAL_NOISE_STREAM]).standard_normal(
            (num_samples, config.z_dim), dtype=np.float32
        )
        for framework in frameworks:
            run = runners[framework](config, seed)
            curves: dict[str, list[float]] = {}
            batches = batch_indices(len(images), config.batch_size, seed)
            run_started = time.perf_counter()
            for step in range(num_steps + 1):
                if step in eval_steps:
                    for key, value in score(run, evaluation, z, config.batch_size).items():
                        curves.setdefault(key, []).append(value)
                    log(
                        f"seed {seed + 1}/{num_seeds} {framework:5} step {step:>6}/{num_steps}: "
                        f"FDD {curves['fdd'][-1]:8.2f}  IS {curves['is'][-1]:5.2f}  "
                        f"({time.perf_counter() - run_started:.0f} s)"
                    )
                if step < num_steps:
                    run.train_step(images[next(batches)])
            for key, values in curves.items():
                results[framework].setdefault(key, []).append(values)
        _write(results, out_dir, started)  # partial results survive an interruption
    ceiling = [results[f]["fdd"][s][0] for f in frameworks for s in range(num_seeds)]
    results["ceiling"] = {"fdd": float(np.mean(ceiling)), "what": "untrained generators"}
    results["final"] = {}
    if set(frameworks) == set(FRAMEWORKS):
        results["final"] = {
            key: final_comparison(
                [curve[-1] for curve in results["jax"][key]],
                [curve[-1] for curve in results["torch"][key]],
            )
            for key in results["torch"]
        }
    _write(results, out_dir, started)
    plot(results, os.path.join(out_dir, "compare.png"))
    log(format_table(results))
    return results


def _write(results: dict, out_dir: str, started: float) -> None:
    results["seconds"] = time.perf_counter() - started
    partial = os.path.join(out_dir, "compare.json.partial")
    with open(partial, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(partial, os.path.join(out_dir, "compare.json"))


_LABELS = {
    "fdd": "FDD, BatchNorm running averages",
    "batch_bn_fdd": "FDD, BatchNorm batch statistics",
    "is": "IS, BatchNorm running averages",
    "batch_bn_is": "IS, BatchNorm batch statistics",
    "ema_fdd": "FDD of the EMA, running averages",
    "ema_batch_bn_fdd": "FDD of the EMA, batch statistics",
    "ema_is": "IS of the EMA, running averages",
    "ema_standing_fdd": "FDD of the EMA, standing statistics",
    "ema_standing_is": "IS of the EMA, standing statistics",
    "ema_batch_bn_is": "IS of the EMA, batch statistics",
}


def format_table(results: dict) -> str:
    n = len(results["seeds"])
    lines = [
        f"At step {results['steps'][-1]}, {n} seed(s), {results['num_samples']} samples each "
        f"(mean +- sd over seeds; floor = held-out real digits):",
        f"{'':38}{'dcgan_jax':>16}{'PyTorch':>16}{'diff/sd':>9}{'p':>7}",
    ]
    for key, row in results["final"].items():
        lines.append(
            f"{_LABELS.get(key, key):38}"
            f"{row['jax_mean']:9.2f} +-{row['jax_std']:5.2f}"
            f"{row['torch_mean']:9.2f} +-{row['torch_std']:5.2f}"
            f"{row['difference_in_pooled_sd']:9.2f}{row['p_value']:7.3f}"
        )
    only_jax = () if results["final"] else ("fdd", "batch_bn_fdd", "is", "batch_bn_is")
    for key in (
        *only_jax,
        *("ema_fdd", "ema_batch_bn_fdd", "ema_standing_fdd"),
        *("ema_is", "ema_batch_bn_is", "ema_standing_is"),
    ):
        if key in results.get("jax", {}):
            values = [curve[-1] for curve in results["jax"][key]]
            spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
            lines.append(f"{_LABELS[key]:38}{np.mean(values):9.2f} +-{spread:5.2f}")
    floor, ceiling = results["floor"], results["ceiling"]
    lines.append(
        f"floor: FDD {floor['fdd']:.2f}, IS {floor['is']:.2f}; ceiling (untrained): FDD "
        f"{ceiling['fdd']:.1f}; classifier held-out accuracy "
        f"{results['classifier_held_out_accuracy']:.2%}"
    )
    return "\n".join(lines)


_COLOURS = {"jax": (0, 114, 178), "torch": (213, 94, 0)}


def plot(results: dict, path: str, width: int = 800, height: int = 520) -> None:
    """FDD (log scale) against step: per framework the mean over seeds as a line and the
    range over seeds as a band; the floor and the ceiling dashed."""
    from PIL import Image, ImageDraw

    from dcgan_jax.sweep import _segment

    steps_ = results["steps"]
    floor, ceiling = results["floor"]["fdd"], results["ceiling"]["fdd"]
    present = [f for f in FRAMEWORKS if f in results]
    values = [v for f in present for curve in results[f]["fdd"] for v in curve]
    y_lo = math.log(max(min([*values, floor]), 1e-3)) - 0.2
    y_hi = math.log(max([*values, ceiling])) + 0.2
    left, right, top, bottom = 80, 170, 40, 60
    x_hi = max(steps_[-1], 1)

    def xy(step, value):
        x = left + step / x_hi * (width - left - right)
        v = math.log(max(value, math.exp(y_lo)))
        return x, height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - top - bottom)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image, "RGBA")
    draw.rectangle((left, top, width - right, height - bottom), outline=(0, 0, 0))
    for exponent in range(math.floor(y_lo / math.log(10)), math.ceil(y_hi / math.log(10)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if y_lo <= math.log(value) <= y_hi:
                _, y = xy(0, value)
                draw.line((left, y, width - right, y), fill=(230, 230, 230))
                draw.text((left - 50, y - 6), f"{value:g}", fill=(0, 0, 0))
    for step in steps_:
        x, _ = xy(step, 1.0)
        draw.line((x, height - bottom, x, height - bottom + 5), fill=(0, 0, 0))
    for step in (steps_[0], steps_[len(steps_) // 2], steps_[-1]):
        x, _ = xy(step, 1.0)
        draw.text((x - 12, height - bottom + 8), str(step), fill=(0, 0, 0))
    draw.text((left + 200, height - 25), "training step", fill=(0, 0, 0))
    draw.text((10, 10), "FDD (log scale, lower is better)", fill=(0, 0, 0))
    n = len(results["seeds"])
    draw.text((left + 220, 10), f"digits, {n} seed(s) per framework", fill=(0, 0, 0))
    legend_y = top + 60  # below the "untrained" label
    lx = width - right + 15
    for framework in present:
        curves = np.asarray(results[framework]["fdd"])
        colour = _COLOURS[framework]
        upper = [xy(s, v) for s, v in zip(steps_, curves.max(0), strict=True)]
        lower = [xy(s, v) for s, v in zip(steps_, curves.min(0), strict=True)]
        if n > 1:
            draw.polygon(upper + lower[::-1], fill=(*colour, 50))
        mean = [xy(s, v) for s, v in zip(steps_, curves.mean(0), strict=True)]
        draw.line(mean, fill=colour, width=2)
        draw.line((lx, legend_y + 6, lx + 30, legend_y + 6), fill=colour, width=2)
        name = "dcgan_jax" if framework == "jax" else "PyTorch"
        draw.text((lx + 36, legend_y), name, fill=(0, 0, 0))
        legend_y += 18
    for label, value in (("floor", floor), ("untrained", ceiling)):
        (x0, y), (x1, _) = xy(0, value), xy(x_hi, value)
        _segment(draw, x0, y, x1, y, (90, 90, 90), dashed=True)
        draw.text((lx, y - 6), label, fill=(90, 90, 90))
    image.save(path)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    xla_flags.apply_defaults()
    f = flags.FLAGS
    log = lambda message: print(message, flush=True)
    with exit_on_user_error():
        results = run_compare(
            f.config,
            f.out,
            f.seeds,
            f.steps,
            f.eval_every or max(1, f.steps // 10),
            f.num_samples,
            log,
            tuple(f.frameworks),
        )
        log(
            f"Wrote {os.path.join(f.out, 'compare.json')} and compare.png "
            f"({results['seconds']:.0f} s)."
        )


def define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file: configs/digits.py.")
    flags.DEFINE_string("out", None, "Directory for compare.json and compare.png.")
    flags.DEFINE_integer("seeds", 5, "Runs per framework (seeds 0..N-1).", lower_bound=1)
    flags.DEFINE_integer("steps", 3_000, "Training steps per run.", lower_bound=1)
    flags.DEFINE_integer(
        "eval_every", 0, "Steps between evaluations (0: a tenth of --steps).", lower_bound=0
    )
    flags.DEFINE_integer(
        "num_samples",
        0,
        "Generated images per evaluation (0: as many as held-out digits).",
        lower_bound=0,
    )
    flags.DEFINE_list("frameworks", list(FRAMEWORKS), "Which to train: jax, torch or both.")
    flags.mark_flags_as_required(["config", "out"])


if __name__ == "__main__":
    define_flags()
    from dcgan_jax.validation import parse_flags

    sys.exit(app.run(main, flags_parser=parse_flags))
