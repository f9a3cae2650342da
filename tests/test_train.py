import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dcgan_jax import checkpointing, distributed, train
from dcgan_jax.validation import ConfigError, UserError
from tests import commands
from tests.conftest import tiny_config


def _assert_states_equal(a, b, rtol=0.0, atol=0.0):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    config = tiny_config(num_train_steps=6, checkpoint_every_steps=3, log_every_steps=3)
    uninterrupted = train.train_and_evaluate(config, str(tmp_path / "straight"))
    assert int(uninterrupted.step) == 6

    first_half = tiny_config(num_train_steps=3, checkpoint_every_steps=3, log_every_steps=3)
    train.train_and_evaluate(first_half, str(tmp_path / "resumed"))
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert int(resumed.step) == 6
    # Same data order, same noise, same state: bit-for-bit equal.
    _assert_states_equal(resumed, uninterrupted)


def _event_tags(workdir) -> dict[str, set[str]]:
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    tags = {"scalars_and_images": set(), "hparams": set()}
    for name in os.listdir(workdir):
        if not name.startswith("events.out.tfevents"):
            continue
        for event in tf.compat.v1.train.summary_iterator(str(workdir / name)):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
                    tags["hparams"] |= set(data.session_start_info.hparams)
                else:
                    tags["scalars_and_images"].add(value.tag)
    return tags


def test_workdir_outputs(tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(num_train_steps=4, max_checkpoints=1)
    state = train.train_and_evaluate(config, str(workdir))
    assert sorted(os.listdir(workdir / "samples")) == ["step_000002.png", "step_000004.png"]
    # max_checkpoints=1 keeps only the last.
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
    # TensorBoard: the losses at each log line, the grids, and the config as hparams.
    tags = _event_tags(workdir)
    assert {"d_loss", "g_loss", "samples"} <= tags["scalars_and_images"], tags
    assert {"batch_size", "learning_rate", "dataset"} <= tags["hparams"], tags
    loaded_config, loaded = checkpointing.load_checkpoint(str(workdir))
    assert loaded_config.to_dict() == config.to_dict()
    _assert_states_equal(loaded, state)


@pytest.mark.slow
def test_cifar10_config_trains_under_mock_data(tmp_path):
    from tests.test_models import _load_config

    config = _load_config("cifar")
    config.g_features, config.d_features = 8, 8
    config.batch_size, config.num_train_steps, config.num_samples = 4, 2, 4
    config.shuffle_buffer_size = 16
    with tfds.testing.mock_data(num_examples=16):
        state = train.train_and_evaluate(config, str(tmp_path / "cifar"))
    assert int(state.step) == 2
    assert (tmp_path / "cifar" / "samples" / "step_000002.png").exists()


@pytest.mark.slow
def test_trains_on_a_folder_of_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(30, 40), (64, 48), (20, 20)] * 4):
        subdir = tmp_path / "images" / f"part{i % 2}"
        subdir.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(subdir / f"{i}.{'png' if i % 3 else 'jpg'}")
    workdir = tmp_path / "run"
    config = tiny_config(dataset=f"folder:{tmp_path / 'images'}", channels=3, batch_size=4)
    state = train.train_and_evaluate(config, str(workdir))
    assert int(state.step) == 4
    assert sorted(os.listdir(workdir / "samples")) == ["step_000002.png", "step_000004.png"]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(num_train_steps=2), workdir)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(UserError, match=r"different config \(g_features: checkpoint 8 vs now 16"):
        train.train_and_evaluate(tiny_config(num_train_steps=4, g_features=16), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"dataset": "imagenet21k"}, r"config.dataset='imagenet21k' is not a dataset"),
        ({"image_size": 48}, r"config.image_size=48 must be a power of two"),
        ({"batch_size": 0}, r"config.batch_size=0 must be a positive integer"),
        ({"num_train_steps": -5}, r"config.num_train_steps=-5 must be a positive integer"),
        ({"batch_size": 7}, r"config.batch_size=7 does not split evenly across the 2"),
        ({"beta1": 1.5}, r"config.beta1=1.5 must be a number in \[0, 1\)"),
        ({"learning_rate": 0.0}, r"config.learning_rate=0.0 must be a number in \(0, 1\)"),
        ({"channels": 2}, r"config.channels=2 must be 1 \(grayscale\) or 3"),
    ],
)
def test_bad_config_values_are_refused_before_any_work(tmp_path, overrides, message):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        train.train_and_evaluate(tiny_config(**overrides), str(workdir))
    assert not workdir.exists()


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match=r"cannot be written.*Fix: pass a --workdir"):
        train.train_and_evaluate(tiny_config(), str(blocker / "run"))


def test_dataset_that_cannot_be_downloaded(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds, "load", no_network)
    with pytest.raises(UserError, match=r"could not load TFDS dataset 'mnist'.*data_dir"):
        train.train_and_evaluate(tiny_config(dataset="mnist"), str(tmp_path / "run"))
    # The data is loaded before the checkpoint directory is touched.
    assert not (tmp_path / "run" / "checkpoints").exists()


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "dcgan_jax.train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=commands.environment(),
        timeout=300,
    )


def test_cli_bad_override_is_one_clear_message(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = _cli(
        "--config",
        os.path.join(repo, "configs", "digits.py"),
        "--workdir",
        str(tmp_path / "run"),
        "--config.image_size=24",
        cwd=str(tmp_path),
    )
    assert result.returncode != 0
    assert "error: config.image_size=24 must be a power of two" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_trains_and_resumes(tmp_path, capsys):
    overrides = dict(
        g_features=8,
        d_features=8,
        z_dim=8,
        batch_size=16,
        log_every_steps=2,
        sample_every_steps=2,
        checkpoint_every_steps=2,
    )
    # The first 2 steps in this process (the function the CLI calls, on the config it
    # builds), the resume through the CLI in a process of its own.
    train.train_and_evaluate(
        commands.digits_config(**overrides, num_train_steps=2), str(tmp_path / "run")
    )
    assert "step 2/2 | d_loss" in capsys.readouterr().out
    second = _cli(
        "--config",
        os.path.join(commands.REPO, "configs", "digits.py"),
        "--workdir",
        str(tmp_path / "run"),
        *(f"--config.{key}={value}" for key, value in overrides.items()),
        "--config.num_train_steps=4",
        cwd=str(tmp_path),
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Resumed from checkpoint at step 2" in second.stdout
    assert "step 4/4 | d_loss" in second.stdout


def test_summarized_metrics_are_the_means_over_steps_of_the_first_device():
    devices = jax.local_devices()
    history = []
    for step in range(3):
        values = {"d_loss": [1.0 + step] * len(devices), "D(x)": [0.5 * step] * len(devices)}
        history.append(
            {
                k: jax.device_put(np.asarray(v, np.float32), train.device_sharding(devices))
                for k, v in values.items()
            }
        )
    assert train.summarize_metrics(history) == pytest.approx({"d_loss": 2.0, "D(x)": 0.5})


def test_object_store_workdir_is_refused_and_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"is a URL.*gcsfuse"):
        train.train_and_evaluate(tiny_config(), "gs://bucket/run")
    assert not os.path.exists(tmp_path / "gs:")


@pytest.mark.parametrize(
    "env,local_devices,idle",
    [
        ({"SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS_PER_NODE": "1"}, 1, 7),
        ({"SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS_PER_NODE": "8"}, 1, None),
        ({"SLURM_GPUS_ON_NODE": "4", "SLURM_NTASKS_PER_NODE": "2(x3)"}, 1, 2),
        ({"SLURM_GPUS_ON_NODE": "4", "SLURM_NTASKS_PER_NODE": "1"}, 4, None),
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "1"}, 1, None),  # GPU count unknown: no guess
        ({}, 1, None),
    ],
)
def test_idle_gpus_under_slurm_are_warned_about(env, local_devices, idle):
    warning = distributed.unused_gpus_warning(env, local_devices)
    if idle is None:
        assert warning is None
    else:
        assert f"so {idle} stay idle" in warning and "--gpus-per-task=1" in warning


@pytest.mark.parametrize(
    "content,message",
    [
        (None, r"could not load the config file '.*missing\.py' \(\[Errno 2\] No such file"),
        ("def get_config(:\n", r"the config file .*broken\.py has a syntax error at line 1"),
    ],
    ids=["missing", "syntax_error"],
)
def test_cli_bad_config_file_is_one_clear_message(tmp_path, content, message):
    import re

    name = "missing.py" if content is None else "broken.py"
    if content is not None:
        (tmp_path / name).write_text(content)
    result = _cli("--config", name, "--workdir", str(tmp_path / "run"), cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search("error: " + message, result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "module,args,message",
    [
        ("sample", ["--workdir", "w", "--num", "-3"], "flag --num=-3: -3 is not a positive"),
        ("evaluate", ["--workdir", "w", "--num_samples", "1"], "flag --num_samples=1"),
    ],
)
def test_cli_out_of_range_flags_are_one_clear_message(tmp_path, module, args, message):
    result = subprocess.run(
        [sys.executable, "-m", f"dcgan_jax.{module}", *args],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 2 and f"error: {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_periodic_actions_run_every_n_steps_and_after_the_last():
    assert [step for step in range(1, 11) if train.is_time(step, 4, 10)] == [4, 8, 10]
    assert [step for step in range(1, 9) if train.is_time(step, 4, 8)] == [4, 8]


def _fresh_step_arguments(config, devices):
    state = train.replicate(train.init_state(config), devices)
    shape = (len(devices), config.batch_size // len(devices), config.image_size)
    images = np.random.default_rng(0).uniform(-1, 1, (*shape, config.image_size, 1))
    batch = jax.device_put(images.astype(np.float32), train.device_sharding(devices))
    return state, batch


def test_step_compiled_in_the_background_is_the_step_called():
    """`train` compiles its step from `abstract_step_arguments` while it initialises the
    state: the executable must fit the arguments it is then called with (else every run
    would compile twice), and compute what the step compiled on its first call does."""
    config, devices = tiny_config(), jax.local_devices()
    train.forget_compiled_programs()
    step = train.make_p_train_step(devices)
    step.start_compiling(*train.abstract_step_arguments(config, devices))
    state, batch = _fresh_step_arguments(config, devices)
    ahead_of_time = step(state, batch)
    assert step.compiled is not None
    on_first_call = train.TrainStep(devices)._changes(state, batch)
    _assert_states_equal(ahead_of_time[0].generator, on_first_call[0].generator)
    _assert_states_equal(ahead_of_time[0].discriminator, on_first_call[0].discriminator)
    _assert_states_equal(ahead_of_time[1], on_first_call[1])


def test_step_compiled_for_other_arguments_compiles_on_its_first_call():
    config, devices = tiny_config(), jax.local_devices()
    step = train.make_p_train_step(devices)
    step.start_compiling(*train.abstract_step_arguments(tiny_config(batch_size=16), devices))
    state, batch = _fresh_step_arguments(config, devices)
    new_state, metrics = step(state, batch)
    assert step.compiled is None  # the call's own compilation, not the executable above
    assert (np.asarray(new_state.step) == 1).all() and np.isfinite(
        np.asarray(metrics["d_loss"])
    ).all()


class _FailingAheadOfTime:
    """The pmapped step, except that its ahead-of-time compilation fails."""

    def __init__(self, pmapped):
        self.pmapped = pmapped

    def lower(self, *args):
        self.pmapped.lower(*args)  # traced as usual

        class Lowered:
            def compile(self):
                raise RuntimeError("no ahead-of-time path here")

        return Lowered()

    def __call__(self, *args):
        return self.pmapped(*args)


def test_step_whose_compilation_failed_compiles_on_its_first_call(capsys):
    config, devices = tiny_config(), jax.local_devices()
    train.forget_compiled_programs()
    step = train.make_p_train_step(devices)
    step._changes = _FailingAheadOfTime(step._changes)
    step.start_compiling(*train.abstract_step_arguments(config, devices))
    new_state, metrics = step(*_fresh_step_arguments(config, devices))
    assert step.compiled is None
    assert (np.asarray(new_state.step) == 1).all() and np.isfinite(
        np.asarray(metrics["d_loss"])
    ).all()
    assert "compiling it on its first call instead" in capsys.readouterr().out
