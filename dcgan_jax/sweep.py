"""Speed and memory against batch size and image size, both frameworks, with a plot.

    python -m dcgan_jax.benchmark --config configs/celeba.py --sweep --out DIR \
        [--batch_sizes 16,64,256] [--image_sizes 32,64,128]

Each point is `benchmark.run_benchmark` of the config at that batch and image size (the
model deepens with the image size, as the configs do: one more block per doubling).
Writes DIR/sweep.json and DIR/sweep.png (images/s against batch size, log-log, a line
per framework and image size; solid JAX, dashed PyTorch). The plot is drawn with Pillow,
so no plotting library is needed.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time

from dcgan_jax import benchmark, default_config

# One colour per image size (colour-blind-safe palette).
_COLOURS = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233))


def run_sweep(
    config,
    out_dir: str,
    batch_sizes=(16, 64, 256),
    image_sizes=(32, 64, 128),
    windows: int = 3,
    steps_per_window: int = 2,
    torch_side: bool = True,
) -> dict:
    """Measures every (image size, batch size) point and writes DIR/sweep.json and .png."""
    os.makedirs(out_dir, exist_ok=True)
    points = []
    start = time.perf_counter()
    for image_size in image_sizes:
        for batch_size in batch_sizes:
            point_config = default_config.with_overrides(
                config, image_size=image_size, batch_size=batch_size
            )
            result = benchmark.run_benchmark(
                point_config,
                windows=windows,
                steps_per_window=steps_per_window,
                torch_side=torch_side,
                gemm_size=0,
            )
            point = {"image_size": image_size, "batch_size": batch_size}
            for name, r in result["frameworks"].items():
                point[name] = {
                    "images_per_s": r["images_per_s"],
                    "peak_memory_mib": r["peak_memory_mib"],
                }
            point["peak_process_rss_mib"] = result["peak_process_rss_mib"]
            points.append(point)
            rates = ", ".join(
                f"{n} {r['images_per_s']:.1f}/s" for n, r in result["frameworks"].items()
            )
            print(
                f"[{time.perf_counter() - start:5.0f} s] {image_size}px batch {batch_size}: "
                f"{rates}",
                flush=True,
            )
    results = {
        "host_cpu": benchmark._cpu_name(),
        "versions": benchmark.versions(),
        "device": result["frameworks"]["jax"]["device"],
        "points": points,
    }
    with open(os.path.join(out_dir, "sweep.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(out_dir, "sweep.png"))
    print(format_sweep(results))
    return results


def format_sweep(results: dict) -> str:
    lines = [
        "| image size | batch | JAX images/s | PyTorch images/s | ratio | JAX peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for p in results["points"]:
        jax_rate = p["jax"]["images_per_s"]
        torch_rate = p.get("torch", {}).get("images_per_s")
        ratio = f"{jax_rate / torch_rate:.2f}x" if torch_rate else "n/a"
        torch_text = f"{torch_rate:.1f}" if torch_rate else "n/a"
        peak = p["jax"]["peak_memory_mib"]
        lines.append(
            f"| {p['image_size']} | {p['batch_size']} | {jax_rate:.1f} | {torch_text} | {ratio} "
            f"| {'n/a' if peak is None else f'{peak:.0f}'} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: str, width: int = 800, height: int = 520) -> None:
    """images/s against batch size (both axes logarithmic) as a PNG."""
    from PIL import Image, ImageDraw

    points = results["points"]
    frameworks = [f for f in ("jax", "torch") if f in points[0]]
    rates = [p[f]["images_per_s"] for p in points for f in frameworks]
    batches = sorted({p["batch_size"] for p in points})
    left, right, top, bottom = 80, 190, 40, 60
    x_lo, x_hi = math.log(batches[0]) - 0.2, math.log(batches[-1]) + 0.2
    y_lo, y_hi = math.log(min(rates)) - 0.2, math.log(max(rates)) + 0.2

    def xy(batch, rate):
        x = left + (math.log(batch) - x_lo) / (x_hi - x_lo) * (width - left - right)
        y = height - bottom - (math.log(rate) - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return x, y

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((left, top, width - right, height - bottom), outline=(0, 0, 0))
    for batch in batches:
        x, _ = xy(batch, math.exp(y_lo))
        draw.line((x, height - bottom, x, height - bottom + 5), fill=(0, 0, 0))
        draw.text((x - 10, height - bottom + 8), str(batch), fill=(0, 0, 0))
    for exponent in range(math.floor(y_lo / math.log(10)), math.ceil(y_hi / math.log(10)) + 1):
        for mantissa in (1, 2, 5):
            rate = mantissa * 10.0**exponent
            if y_lo <= math.log(rate) <= y_hi:
                _, y = xy(batches[0], rate)
                draw.line((left - 5, y, left, y), fill=(0, 0, 0))
                draw.line((left, y, width - right, y), fill=(230, 230, 230))
                draw.text((left - 60, y - 6), f"{rate:g}", fill=(0, 0, 0))
    draw.text((left + 150, height - 25), "batch size (log scale)", fill=(0, 0, 0))
    draw.text((10, 10), "images/s (log scale)", fill=(0, 0, 0))
    title = f"DCGAN training step: {results['host_cpu']}, {results['device']}"
    draw.text((left + 120, 10), title[:90], fill=(0, 0, 0))
    sizes = sorted({p["image_size"] for p in points})
    legend_y = top + 10
    for i, size in enumerate(sizes):
        colour = _COLOURS[i % len(_COLOURS)]
        for framework in frameworks:
            line = [
                xy(p["batch_size"], p[framework]["images_per_s"])
                for p in points
                if p["image_size"] == size
            ]
            dashed = framework == "torch"
            for (x0, y0), (x1, y1) in itertools.pairwise(line):
                _segment(draw, x0, y0, x1, y1, colour, dashed)
            for x, y in line:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
            lx = width - right + 15
            _segment(draw, lx, legend_y + 6, lx + 30, legend_y + 6, colour, dashed)
            name = "JAX" if framework == "jax" else "PyTorch"
            draw.text((lx + 36, legend_y), f"{name} {size}px", fill=(0, 0, 0))
            legend_y += 18
    image.save(path)


def _segment(draw, x0, y0, x1, y1, colour, dashed: bool) -> None:
    if not dashed:
        draw.line((x0, y0, x1, y1), fill=colour, width=2)
        return
    length = math.hypot(x1 - x0, y1 - y0)
    pieces = max(1, int(length // 8))
    for k in range(0, pieces, 2):
        a, b = k / pieces, min(1.0, (k + 1) / pieces)
        draw.line(
            (x0 + a * (x1 - x0), y0 + a * (y1 - y0), x0 + b * (x1 - x0), y0 + b * (y1 - y0)),
            fill=colour,
            width=2,
        )
