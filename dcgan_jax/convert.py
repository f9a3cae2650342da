"""Bring PyTorch DCGAN weights into a training run, or a run's weights out to PyTorch.

    # pytorch/examples dcgan checkpoints -> a workdir that training resumes from and
    # sampling reads (written as step 0, with fresh Adam moments):
    python -m dcgan_jax.convert --netG netG_epoch_24.pth --netD netD_epoch_24.pth \\
        --config configs/celeba.py --workdir runs/from_torch

    # the latest checkpoint of a run -> OUTDIR/netG.pth and OUTDIR/netD.pth:
    python -m dcgan_jax.convert --to-torch --workdir runs/celeba --out exported/
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from dcgan_jax import checkpointing, conversion, models
from dcgan_jax.state import create_state
from dcgan_jax.validation import (
    UserError,
    check_workdir_writable,
    describe_error,
    exit_on_user_error,
    validate_config,
)


def _load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    import torch

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated or not a torch file
        raise UserError(
            f"cannot read PyTorch weights from {path!r} ({describe_error(e)}). Fix: pass the "
            "state dicts pytorch/examples saves (netG_epoch_N.pth, netD_epoch_N.pth, written "
            "by torch.save(net.state_dict(), path))."
        ) from e
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise UserError(
            f"{path!r} holds a {type(state_dict).__name__}, not a state dict of tensors. Fix: "
            "save it with torch.save(net.state_dict(), path)."
        )
    return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def torch_files_to_workdir(net_g_path: str, net_d_path: str, config, workdir: str) -> int:
    """Writes a step-0 checkpoint of `config`'s model holding the PyTorch weights."""
    validate_config(config, num_devices=1)
    check_workdir_writable(workdir)
    # Everything that can fail on the user's files comes before the checkpoint directory is
    # created or touched.
    net_g, net_d = _load_torch_state_dict(net_g_path), _load_torch_state_dict(net_d_path)
    generator, discriminator = models.make_models(config)
    state = create_state(config, generator, discriminator)
    state = conversion.load_into_state(state, net_g, net_d, config)
    with checkpointing.make_manager(workdir, config.max_checkpoints) as manager:
        if manager.all_steps():
            raise UserError(
                f"{manager.directory} already holds checkpoints {list(manager.all_steps())}; "
                "nothing was written. Fix: convert into a new --workdir."
            )
        checkpointing.save(manager, state, config)
        manager.wait_until_finished()
    return int(state.step)


def workdir_to_torch_files(workdir: str, out_dir: str) -> tuple[str, str]:
    """Writes the latest checkpoint's networks as out_dir/netG.pth and out_dir/netD.pth."""
    import torch

    paths = (os.path.join(out_dir, "netG.pth"), os.path.join(out_dir, "netD.pth"))
    existing = [p for p in paths if os.path.exists(p)]
    if existing:
        raise UserError(f"{existing} already exist; nothing was written. Fix: another --out.")
    config, state = checkpointing.load_checkpoint(workdir)
    check_workdir_writable(out_dir)
    for path, state_dict in zip(paths, conversion.state_to_torch(state, config), strict=True):
        torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
    return paths


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    with exit_on_user_error():
        if f["to-torch"].value:
            if not f.out:
                raise UserError("--to-torch needs --out DIR for netG.pth and netD.pth.")
            paths = workdir_to_torch_files(f.workdir, f.out)
            print(f"Wrote {paths[0]} and {paths[1]}.")
        else:
            if not (f.netG and f.netD and f.config):
                raise UserError("converting from PyTorch needs --netG, --netD and --config.")
            step = torch_files_to_workdir(f.netG, f.netD, f.config, f.workdir)
            print(
                f"Wrote a checkpoint at step {step} to {checkpointing.checkpoint_dir(f.workdir)}."
            )


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config describing the architecture.")
    flags.DEFINE_string("netG", None, "PyTorch generator state dict (.pth).")
    flags.DEFINE_string("netD", None, "PyTorch discriminator state dict (.pth).")
    flags.DEFINE_string("workdir", None, "Run directory to write (or, with --to-torch, read).")
    flags.DEFINE_bool("to-torch", False, "Export the workdir's latest checkpoint to PyTorch.")
    flags.DEFINE_string("out", None, "With --to-torch: directory for netG.pth and netD.pth.")
    flags.mark_flags_as_required(["workdir"])
    from dcgan_jax.validation import parse_flags

    app.run(main, flags_parser=parse_flags)
