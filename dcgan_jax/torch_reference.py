"""The PyTorch reference DCGAN: the models and training step of pytorch/examples `dcgan/main.py`.

This is the only module that imports PyTorch, and only when its functions are called, so
the rest of the package works without it. The modules reproduce that script's
`nn.Sequential` layout (`main.0.weight`, `main.1.running_mean`, ...), so the
`netG_epoch_N.pth` / `netD_epoch_N.pth` files it saves load into them unchanged; other
image sizes and the 'linear' discriminator head of configs/cifar.py extend the same layout.
"""

from __future__ import annotations

import itertools

from dcgan_jax.models import discriminator_widths, generator_widths


def _torch():
    import torch

    return torch


def build_generator(config):
    """pytorch/examples' Generator for `config` (an nn.Module with a `main` Sequential)."""
    torch = _torch()
    nn = torch.nn
    widths = generator_widths(config.g_features, config.image_size)
    layers = [nn.ConvTranspose2d(config.z_dim, widths[0], 4, 1, 0, bias=False)]
    layers += [nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
    for c_in, c_out in itertools.pairwise(widths):
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
        layers += [nn.BatchNorm2d(c_out), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(widths[-1], config.channels, 4, 2, 1, bias=False), nn.Tanh()]

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Sequential(*layers)

        def forward(self, z):
            if z.dim() == 2:
                z = z[:, :, None, None]
            return self.main(z)

    return Generator()


def build_discriminator(config):
    """pytorch/examples' Discriminator for `config`; outputs probabilities of shape (batch,)."""
    torch = _torch()
    nn = torch.nn
    widths = discriminator_widths(config.d_features, config.image_size)
    layers = [nn.Conv2d(config.channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    for c_in, c_out in itertools.pairwise(widths):
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)]
        layers += [nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
    if config.d_head == "conv":
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)]
    else:
        layers += [nn.Flatten(), nn.Linear(widths[-1] * 16, 1)]
    layers += [nn.Sigmoid()]

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Sequential(*layers)

        def forward(self, x):
            return self.main(x).view(-1, 1).squeeze(1)

    return Discriminator()


def dcgan_init_(module) -> None:
    """pytorch/examples' `weights_init`, extended to the linear head: N(0, 0.02) weights."""
    torch = _torch()
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.02)
            torch.nn.init.zeros_(m.bias)


def build(config, seed: int = 0):
    """(netG, netD, optimizerG, optimizerD) initialised as pytorch/examples does."""
    torch = _torch()
    torch.manual_seed(seed)
    net_g, net_d = build_generator(config), build_discriminator(config)
    dcgan_init_(net_g)
    dcgan_init_(net_d)
    opt_g, opt_d = make_optimizers(config, net_g, net_d)
    return net_g, net_d, opt_g, opt_d


def use_tf32_for_speed() -> None:
    """On CUDA, PyTorch's float32 matrix products and convolutions in TF32
    (`set_float32_matmul_precision("high")`, cuDNN's `allow_tf32`, its default), for speed
    runs: fp32 then means TF32 matrix units on both sides, as XLA's default for float32
    dots and convolutions; otherwise the reference's linear layers (and the GEMM rate
    measured beside the step) would run at full float32, several times slower. Nothing
    changes on the CPU."""
    torch = _torch()
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def make_optimizers(config, net_g, net_d):
    torch = _torch()
    betas = (config.beta1, config.beta2)
    return (
        torch.optim.Adam(net_g.parameters(), lr=config.learning_rate, betas=betas),
        torch.optim.Adam(net_d.parameters(), lr=config.learning_rate, betas=betas),
    )


def train_step(net_g, net_d, opt_g, opt_d, real, noise, autocast_dtype=None) -> dict[str, object]:
    """One iteration of pytorch/examples `dcgan/main.py`'s training loop.

    Two departures from that script, neither of which changes the numbers: the metrics are
    returned as 0-d tensors on the device (its `.item()` calls would make five host syncs a
    step, which JAX's step does not make: `metrics_to_floats` converts them when needed),
    and under `autocast_dtype` (e.g. torch.bfloat16) only the forward passes are autocast
    while the loss is computed in float32 (CUDA's autocast refuses BCELoss, and JAX's bf16
    step also takes the loss of float32 logits).

    Args:
      real: (batch, C, H, W) images in [-1, 1]. noise: (batch, z_dim[, 1, 1]).
    Returns:
      The step's losses and D outputs, as detached 0-d tensors.
    """
    torch = _torch()
    criterion = torch.nn.BCELoss()
    batch = real.shape[0]
    real_label = torch.full((batch,), 1.0, dtype=real.dtype, device=real.device)
    fake_label = torch.full((batch,), 0.0, dtype=real.dtype, device=real.device)

    def forward(net, x):
        with torch.autocast(
            real.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
        ):
            return net(x).to(real.dtype)

    # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
    net_d.zero_grad()
    output = forward(net_d, real)
    err_d_real = criterion(output, real_label)
    err_d_real.backward()
    d_x = output.detach().mean()
    fake = forward(net_g, noise)
    output = forward(net_d, fake.detach())
    err_d_fake = criterion(output, fake_label)
    err_d_fake.backward()
    d_g_z1 = output.detach().mean()
    err_d = err_d_real + err_d_fake
    opt_d.step()

    # (2) Update G: maximize log(D(G(z)))
    net_g.zero_grad()
    output = forward(net_d, fake)
    err_g = criterion(output, real_label)
    err_g.backward()
    d_g_z2 = output.detach().mean()
    opt_g.step()
    return {
        "d_loss": err_d.detach(),
        "g_loss": err_g.detach(),
        "D(x)": d_x,
        "D(G(z))": d_g_z1,
        "D(G(z))_after": d_g_z2,
    }


def metrics_to_floats(metrics: dict) -> dict[str, float]:
    """`train_step`'s metrics as Python floats (one host sync)."""
    torch = _torch()
    values = torch.stack(list(metrics.values())).cpu().tolist()
    return dict(zip(metrics, values, strict=True))
