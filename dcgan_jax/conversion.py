"""Lossless conversion between PyTorch DCGAN state dicts and this project's Flax variables.

Works on plain NumPy arrays (no PyTorch import). Layouts:
  ConvTranspose2d weight (in, out, kh, kw)  <-> kernel (kh, kw, in, out)   (no flip: see models.py)
  Conv2d weight          (out, in, kh, kw)  <-> kernel (kh, kw, in, out)
  Linear weight on NCHW-flattened 4x4xC features (1, C*16) <-> kernel (4, 4, C, 1), bias (1,)
  BatchNorm2d weight, bias, running_mean, running_var (unbiased, as both track it),
  num_batches_tracked <-> params scale, bias; batch_stats mean, var, num_batches_tracked
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dcgan_jax.models import num_resolution_blocks
from dcgan_jax.validation import UserError

# (flax module name, index in the PyTorch `main` Sequential, layer kind)
Layout = list[tuple[str, int, str]]


def generator_layout(config) -> Layout:
    """Where each generator layer sits in pytorch/examples' `main` Sequential."""
    n = num_resolution_blocks(config.image_size)
    layout = [("Dense4x4_0", 0, "conv_transpose"), ("BatchNorm_0", 1, "batch_norm")]
    for j in range(n - 1):  # each block: ConvTranspose2d, BatchNorm2d, ReLU
        layout += [(f"UpConv_{j}", 3 * (j + 1), "conv_transpose")]
        layout += [(f"BatchNorm_{j + 1}", 3 * (j + 1) + 1, "batch_norm")]
    return [*layout, (f"UpConv_{n - 1}", 3 * n, "conv_transpose")]


def discriminator_layout(config) -> Layout:
    """Where each discriminator layer sits in pytorch/examples' `main` Sequential."""
    n = num_resolution_blocks(config.image_size)
    layout = [("DownConv_0", 0, "conv")]  # then LeakyReLU at 1
    for j in range(1, n):  # each block: Conv2d, BatchNorm2d, LeakyReLU
        layout += [
            (f"DownConv_{j}", 3 * j - 1, "conv"),
            (f"BatchNorm_{j - 1}", 3 * j, "batch_norm"),
        ]
    if config.d_head == "conv":
        return [*layout, ("Dense4x4_0", 3 * n - 1, "conv")]
    return [*layout, ("Dense4x4_0", 3 * n, "linear")]  # after Flatten at 3n - 1


def _expected_torch_shapes(variables, layout: Layout) -> dict[str, tuple]:
    shapes = {}
    for name, index, kind in layout:
        prefix = f"main.{index}."
        if kind == "batch_norm":
            (c,) = variables["params"][name]["scale"].shape
            for key in ("weight", "bias", "running_mean", "running_var"):
                shapes[prefix + key] = (c,)
            shapes[prefix + "num_batches_tracked"] = ()
            continue
        kh, kw, c_in, c_out = variables["params"][name]["kernel"].shape
        if kind == "conv_transpose":
            shapes[prefix + "weight"] = (c_in, c_out, kh, kw)
        elif kind == "conv":
            shapes[prefix + "weight"] = (c_out, c_in, kh, kw)
        else:
            shapes[prefix + "weight"] = (c_out, c_in * kh * kw)
            shapes[prefix + "bias"] = (c_out,)
    return shapes


def check_state_dict(state_dict: Mapping, template, layout: Layout, what: str) -> None:
    """Raises UserError if `state_dict` does not have exactly the keys and shapes expected."""
    expected = _expected_torch_shapes(template, layout)
    got = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    problems = [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [
        f"{k} has shape {got[k]}, expected {shape}"
        for k, shape in expected.items()
        if k in got and got[k] != shape
    ]
    if problems:
        raise UserError(
            f"{what} does not match the config's architecture: "
            + "; ".join(problems[:6])
            + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
            + ". Fix: pass the config (image_size, channels, z_dim, g_features, d_features, "
            "d_head) the weights were trained with."
        )


def torch_to_flax(state_dict: Mapping, layout: Layout) -> dict:
    """PyTorch state dict (arrays) -> {'params': ..., 'batch_stats': ...}."""
    params, batch_stats = {}, {}
    for name, index, kind in layout:
        get = lambda key, index=index: np.asarray(state_dict[f"main.{index}.{key}"])
        if kind == "batch_norm":
            params[name] = {"scale": get("weight"), "bias": get("bias")}
            batch_stats[name] = {
                "mean": get("running_mean"),
                "var": get("running_var"),
                "num_batches_tracked": get("num_batches_tracked").astype(np.int32),
            }
        elif kind == "conv_transpose":
            params[name] = {"kernel": get("weight").transpose(2, 3, 0, 1)}
        elif kind == "conv":
            params[name] = {"kernel": get("weight").transpose(2, 3, 1, 0)}
        else:  # linear on (C, 4, 4)-flattened features
            weight = get("weight")
            c_in = weight.shape[1] // 16
            kernel = weight.reshape(weight.shape[0], c_in, 4, 4).transpose(2, 3, 1, 0)
            params[name] = {"kernel": kernel, "bias": get("bias")}
    return {"params": params, "batch_stats": batch_stats}


def flax_to_torch(variables: Mapping, layout: Layout) -> dict[str, np.ndarray]:
    """{'params': ..., 'batch_stats': ...} -> PyTorch state dict as NumPy arrays."""
    state_dict = {}
    for name, index, kind in layout:
        prefix = f"main.{index}."
        p = {k: np.asarray(v) for k, v in variables["params"][name].items()}
        if kind == "batch_norm":
            s = {k: np.asarray(v) for k, v in variables["batch_stats"][name].items()}
            state_dict[prefix + "weight"] = p["scale"]
            state_dict[prefix + "bias"] = p["bias"]
            state_dict[prefix + "running_mean"] = s["mean"]
            state_dict[prefix + "running_var"] = s["var"]
            state_dict[prefix + "num_batches_tracked"] = s["num_batches_tracked"].astype(np.int64)
        elif kind == "conv_transpose":
            state_dict[prefix + "weight"] = p["kernel"].transpose(2, 3, 0, 1)
        elif kind == "conv":
            state_dict[prefix + "weight"] = p["kernel"].transpose(3, 2, 0, 1)
        else:
            kernel = p["kernel"]  # (4, 4, C, out)
            state_dict[prefix + "weight"] = kernel.transpose(3, 2, 0, 1).reshape(
                kernel.shape[3], -1
            )
            state_dict[prefix + "bias"] = p["bias"]
    return {k: np.array(v, order="C") for k, v in state_dict.items()}


def load_into_state(state, g_state_dict: Mapping, d_state_dict: Mapping, config):
    """`state` with both networks' parameters and BatchNorm statistics from PyTorch."""
    networks = {}
    for field, state_dict, layout, what in (
        ("generator", g_state_dict, generator_layout(config), "the generator's state dict"),
        ("discriminator", d_state_dict, discriminator_layout(config), "the discriminator's"),
    ):
        train_state = getattr(state, field)
        template = {"params": train_state.params, "batch_stats": train_state.batch_stats}
        check_state_dict(state_dict, template, layout, what)
        variables = torch_to_flax(state_dict, layout)
        networks[field] = train_state.replace(
            params=variables["params"], batch_stats=variables["batch_stats"]
        )
    # The EMA of the generator starts at the converted weights.
    return state.replace(**networks, ema_params=networks["generator"].params)


def state_to_torch(state, config) -> tuple[dict, dict]:
    """(netG, netD) state dicts as NumPy arrays from a GANState."""
    return tuple(
        flax_to_torch({"params": net.params, "batch_stats": net.batch_stats}, layout)
        for net, layout in (
            (state.generator, generator_layout(config)),
            (state.discriminator, discriminator_layout(config)),
        )
    )
