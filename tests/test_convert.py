"""PyTorch checkpoints in and out through the CLIs, and training on from converted weights."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dcgan_jax import checkpointing, convert, torch_reference, train  # noqa: E402
from dcgan_jax.validation import UserError  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402
from tests.test_torch_parity import _randomize_running_stats, assert_close  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/celeba.py (the pytorch/examples model) at 32x32 and a tenth of the width.
CELEBA_SMALL = ["--config.image_size=32", "--config.g_features=8", "--config.d_features=8"]


def _run(module, *args):
    result = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _reference_nets(config, seed):
    net_g, net_d, *_ = torch_reference.build(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    _randomize_running_stats(net_g, gen)
    _randomize_running_stats(net_d, gen)
    return net_g.eval(), net_d.eval()


@pytest.mark.slow
def test_pytorch_examples_checkpoint_round_trip_through_the_clis(tmp_path):
    config = tiny_config(image_size=32, channels=3, z_dim=100, g_features=8, d_features=8)
    config.d_head = "conv"
    net_g, net_d = _reference_nets(config, seed=11)
    # Saved the way pytorch/examples dcgan/main.py saves them.
    torch.save(net_g.state_dict(), tmp_path / "netG_epoch_24.pth")
    torch.save(net_d.state_dict(), tmp_path / "netD_epoch_24.pth")

    workdir = str(tmp_path / "from_torch")
    _run(
        "dcgan_jax.convert",
        f"--netG={tmp_path / 'netG_epoch_24.pth'}",
        f"--netD={tmp_path / 'netD_epoch_24.pth'}",
        f"--config={os.path.join(REPO, 'configs', 'celeba.py')}",
        *CELEBA_SMALL,
        f"--workdir={workdir}",
    )
    z = np.random.default_rng(0).standard_normal((6, 100)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    _run(
        "dcgan_jax.sample",
        f"--workdir={workdir}",
        f"--z={tmp_path / 'z.npy'}",
        f"--out={tmp_path / 'images.npy'}",
    )
    images = np.load(tmp_path / "images.npy")
    with torch.no_grad():
        expected = net_g(torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.float32
    assert_close(images, expected, 1e-5)

    _run("dcgan_jax.convert", "--to-torch", f"--workdir={workdir}", f"--out={tmp_path / 'out'}")
    for name, net in (("netG.pth", net_g), ("netD.pth", net_d)):
        exported = torch.load(tmp_path / "out" / name, weights_only=True)
        assert list(exported) == list(net.state_dict())
        for key, value in net.state_dict().items():
            assert torch.equal(exported[key], value), key


def test_training_continues_from_converted_weights(tmp_path):
    config = tiny_config(num_train_steps=1, log_every_steps=1)
    net_g, net_d = _reference_nets(config, seed=5)
    torch.save(net_g.state_dict(), tmp_path / "g.pth")
    torch.save(net_d.state_dict(), tmp_path / "d.pth")
    workdir = str(tmp_path / "run")
    convert.torch_files_to_workdir(
        str(tmp_path / "g.pth"), str(tmp_path / "d.pth"), config, workdir
    )
    _, converted = checkpointing.load_checkpoint(workdir)
    assert int(converted.step) == 0

    state = train.train_and_evaluate(config, workdir)
    assert int(state.step) == 1
    # One Adam step moves each weight by at most ~lr from the converted value.
    for before, after in zip(
        jax.tree_util.tree_leaves(converted.generator.params),
        jax.tree_util.tree_leaves(state.generator.params),
        strict=True,
    ):
        assert np.abs(np.asarray(after) - np.asarray(before)).max() <= 1.01 * config.learning_rate


def test_conversion_never_overwrites(tmp_path):
    config = tiny_config()
    net_g, net_d = _reference_nets(config, seed=1)
    torch.save(net_g.state_dict(), tmp_path / "g.pth")
    torch.save(net_d.state_dict(), tmp_path / "d.pth")
    workdir = str(tmp_path / "run")
    paths = (str(tmp_path / "g.pth"), str(tmp_path / "d.pth"))
    convert.torch_files_to_workdir(*paths, config, workdir)
    with pytest.raises(UserError, match="already holds checkpoints"):
        convert.torch_files_to_workdir(*paths, config, workdir)
    convert.workdir_to_torch_files(workdir, str(tmp_path / "out"))
    with pytest.raises(UserError, match="already exist"):
        convert.workdir_to_torch_files(workdir, str(tmp_path / "out"))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not a checkpoint", r"cannot read PyTorch weights .*\(UnpicklingError: [^\n]*\)\. Fix"),
        ([1, 2, 3], r"holds a list, not a state dict of tensors\. Fix: save it with"),
        ({"main.0.weight": "text"}, r"holds a dict, not a state dict of tensors"),
    ],
    ids=["not_torch", "a_list", "not_tensors"],
)
def test_unreadable_torch_file_is_one_line_and_writes_nothing(tmp_path, content, message):
    path = tmp_path / "g.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UserError, match=message):
        convert.torch_files_to_workdir(str(path), str(path), tiny_config(), str(tmp_path / "r"))
    assert not (tmp_path / "r" / "checkpoints").exists()
