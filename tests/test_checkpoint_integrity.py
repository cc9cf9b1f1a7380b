"""Checkpoint integrity: leaf digests, fallback past damaged steps, retention, ``resume_step``.

A tiny MLP trained in calls of 2 updates with a checkpoint every 2 steps (the settings of
tests/test_train.py, so the compiled step is shared). ``half`` is a workdir trained to step 4
(steps 2 and 4 saved); each test damages a copy. Batches and noise are functions of (seed, step),
so a run that falls back to step 2 and trains on reaches exactly the state of a run that never
had the damaged step.
"""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffusion_lv.config_files import load_config
from diffusion_lv.data import toy
from diffusion_lv.experiment import ConfigError, parse
from diffusion_lv.models.mlp import MLP
from diffusion_lv.training import (
    Checkpointer,
    CheckpointError,
    create_train_state,
    make_optimizer,
    train,
)
from tests.test_train import CONFIG as TRAIN_CONFIG
from tests.test_train import LOSS, NETWORK, OPTIM, PARAM, assert_same_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The training tests' tiny model, loss and optimiser; three checkpoints kept here.
CONFIG = dataclasses.replace(TRAIN_CONFIG, keep_checkpoints=3)


def run(workdir, console=True, after_call=None, **changes):
    config = dataclasses.replace(CONFIG, **changes)
    return train(str(workdir), NETWORK, PARAM, LOSS, OPTIM, config, toy.ring8, (2,),
                 console=console, after_call=after_call)


def like(network=NETWORK):
    return create_train_state(network, make_optimizer(OPTIM), CONFIG.seed, (2,), 2)


def ckdir(workdir):
    return os.path.join(workdir, "checkpoints")


def steps(workdir):
    return sorted(int(n) for n in os.listdir(ckdir(workdir)) if n.isdigit())


def listing(folder):
    """{relative path: bytes} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def largest_data_file(workdir, step):
    """The largest array-data file of a step (orbax's ocdbt data files live in ``.../d/``)."""
    files = [os.path.join(root, name)
             for root, _, names in os.walk(os.path.join(ckdir(workdir), str(step), "default"))
             if os.path.basename(root) == "d" for name in names]
    return max(files, key=os.path.getsize)


def first_zstd_block(data):
    """(offset, size) of the first block of the zstd frame that starts ``data`` (RFC 8878)."""
    assert data[:4] == b"\x28\xb5\x2f\xfd", "not a zstd frame"
    descriptor = data[4]
    single_segment = (descriptor >> 5) & 1
    offset = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    offset += ((1 if single_segment else 0), 2, 4, 8)[descriptor >> 6]
    header = int.from_bytes(data[offset:offset + 3], "little")
    return offset + 3, header >> 3


def invert_bytes(workdir, step, count=64):
    """Invert ``count`` bytes of stored array values: in the middle of the first compressed
    chunk of the largest data file, where zstd decodes them into other values without error
    (the user's case; the file's tail may hold index nodes that a restore never reads)."""
    path = largest_data_file(workdir, step)
    data = bytearray(open(path, "rb").read())
    block, size = first_zstd_block(data)
    start = block + size // 6
    data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
    open(path, "wb").write(bytes(data))


def truncate(workdir, step):
    """Cut the largest data file inside its first chunk (its tail may never be read)."""
    path = largest_data_file(workdir, step)
    block, size = first_zstd_block(open(path, "rb").read())
    os.truncate(path, block + size // 2)


def empty_step(workdir, step):
    shutil.rmtree(os.path.join(ckdir(workdir), str(step)))
    os.mkdir(os.path.join(ckdir(workdir), str(step)))


def lines(capsys, text):
    return [line for line in capsys.readouterr().err.splitlines() if text in line]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run to step 8."""
    return run(tmp_path_factory.mktemp("straight"), console=False).state


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    """A workdir trained to step 4: steps 2 and 4 saved, each with its digest."""
    workdir = tmp_path_factory.mktemp("half")
    result = run(workdir, console=False, num_steps=4)
    assert steps(workdir) == [2, 4]
    assert os.path.isdir(os.path.join(ckdir(workdir), "4", "digest"))
    return str(workdir), result.state


def copy_of(half, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(half[0], workdir)
    return workdir


def test_inverted_bytes_are_caught_moved_aside_and_training_falls_back(
    half, straight, tmp_path, capsys
):
    workdir = copy_of(half, tmp_path)
    invert_bytes(workdir, 4)
    capsys.readouterr()
    kept = []
    result = run(workdir, keep_checkpoints=1, after_call=lambda _: kept.append(steps(workdir)))
    err = capsys.readouterr().err
    damaged = [line for line in err.splitlines() if "is damaged" in line]
    assert len(damaged) == 1, err
    assert damaged[0].startswith("checkpoint step 4 is damaged (")
    assert "(digest mismatch in " in damaged[0]  # orbax restored other values without error
    assert damaged[0].endswith("): moved aside to 4.corrupt; trying step 2")
    assert "resumed from checkpoint at step 2" in err
    assert os.path.isdir(os.path.join(ckdir(workdir), "4.corrupt"))
    # The run reaches the state of one that never had the damaged step.
    assert int(result.state.step) == 8
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.state))
    assert_same_state(result.state, straight)
    # keep=1 never removed step 2, the newest verified checkpoint, while training on.
    assert all(2 in now for now in kept), kept
    assert steps(workdir) == [2, 8]
    # The next run resumes from 8 (verified now): step 2 may go, 8 stays while 10 is written.
    run(workdir, num_steps=10, keep_checkpoints=1)
    assert steps(workdir) == [8, 10]


@pytest.mark.parametrize("damage, reason", [
    (truncate, "(restore failed: "),
    (empty_step, "(empty step folder)"),
])
def test_truncated_file_or_empty_step_is_reported_in_one_line_and_skipped(
    half, tmp_path, capsys, damage, reason
):
    workdir = copy_of(half, tmp_path)
    damage(workdir, 4)
    capsys.readouterr()
    result = run(workdir, num_steps=4)
    damaged = lines(capsys, "is damaged")
    assert len(damaged) == 1 and reason in damaged[0], damaged
    assert damaged[0].endswith("moved aside to 4.corrupt; trying step 2")
    assert_same_state(result.state, half[1])  # trained 2 -> 4 again
    assert steps(workdir) == [2, 4]
    # A second damage of the same step gets the next free name.
    damage(workdir, 4)
    run(workdir, num_steps=4, console=False)
    assert {"4.corrupt", "4.corrupt.1"} <= set(os.listdir(ckdir(workdir)))


def test_every_step_bad_is_an_error_not_a_fresh_start(half, tmp_path):
    workdir = copy_of(half, tmp_path)
    invert_bytes(workdir, 4)
    truncate(workdir, 2)
    before = listing(ckdir(workdir))
    with pytest.raises(CheckpointError) as err:
        run(workdir, console=False)
    message = str(err.value)
    assert "no usable checkpoint" in message and "(2.corrupt, 4.corrupt)" in message
    assert "move the folder away" in message
    # Unchanged apart from the two moves.
    moved = {path.replace("2/", "2.corrupt/", 1).replace("4/", "4.corrupt/", 1): data
             for path, data in before.items()}
    assert listing(ckdir(workdir)) == moved
    # Running again does not start over them either.
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        run(workdir, console=False)
    assert listing(ckdir(workdir)) == moved


def test_resume_step_resumes_there_and_moves_later_steps_aside(half, straight, tmp_path, capsys):
    workdir = copy_of(half, tmp_path)
    run(workdir, console=False, num_steps=8)  # resumed from 4: saves 6 and 8; 2 goes (keep 3)
    assert steps(workdir) == [4, 6, 8]
    before = listing(ckdir(workdir))
    with pytest.raises(CheckpointError) as err:
        run(workdir, console=False, resume_step=5)
    assert str(err.value).startswith("resume_step=5 has no checkpoint in ")
    assert str(err.value).endswith("saved steps: [4, 6, 8]")
    assert listing(ckdir(workdir)) == before
    capsys.readouterr()
    result = run(workdir, resume_step=4)
    err = capsys.readouterr().err
    assert ("resuming from step 4 as asked (resume_step): moved the later steps 6, 8 aside to "
            "<step>.superseded") in err
    assert "resumed from checkpoint at step 4" in err
    assert {"6.superseded", "8.superseded"} <= set(os.listdir(ckdir(workdir)))
    assert steps(workdir) == [4, 6, 8]  # 6 and 8 written anew
    assert_same_state(result.state, straight)


def test_resume_step_config_key():
    config = load_config(os.path.join(ROOT, "configs", "default.py"))
    assert config.training.resume_step is None
    config.training.resume_step = 4
    assert parse(config).training.resume_step == 4
    config.training.resume_step = -1
    with pytest.raises(ConfigError, match=r"config\.training\.resume_step=-1 is not valid"):
        parse(config)


def test_step_without_digest_is_restored_with_a_warning(half, tmp_path, capsys):
    workdir = str(tmp_path / "old")
    manager = ocp.CheckpointManager(ckdir(workdir))  # the layout of earlier versions
    manager.save(4, args=ocp.args.StandardSave(half[1]), force=True)
    manager.close()
    capsys.readouterr()
    result = run(workdir, num_steps=4)
    err = capsys.readouterr().err
    assert ("checkpoint step 4 has no digest (saved by an older version): restored without "
            "verification") in err
    assert "resumed from checkpoint at step 4" in err
    assert_same_state(result.state, half[1])
    reader = Checkpointer(workdir, read_only=True, log=print)
    assert_same_state(reader.restore(like()), half[1])
    reader.close()


def test_read_only_restore_of_a_damaged_step_raises_and_changes_nothing(half, tmp_path):
    workdir = copy_of(half, tmp_path)
    invert_bytes(workdir, 4)
    before = listing(ckdir(workdir))
    reader = Checkpointer(workdir, read_only=True)
    for step in (4, None):
        with pytest.raises(CheckpointError) as err:
            reader.restore(like(), step)
        assert str(err.value).startswith(f"checkpoint step 4 in {ckdir(workdir)} is damaged (")
        assert str(err.value).endswith("nothing was changed; other saved steps: [2]")
    assert_same_state(reader.restore(like(), 2), jax.device_get(
        Checkpointer(half[0], read_only=True).restore(like(), 2)))
    reader.close()
    assert listing(ckdir(workdir)) == before


def test_another_models_checkpoint_is_refused_without_moving_it(half, tmp_path):
    workdir = copy_of(half, tmp_path)
    before = listing(ckdir(workdir))
    checkpoints = Checkpointer(workdir)
    with pytest.raises(CheckpointError, match="does not match this model and optimiser"):
        checkpoints.resume(like(MLP(width=32, num_blocks=1, embedding_features=8)))
    checkpoints.close()
    assert listing(ckdir(workdir)) == before


def test_digest_lists_every_leaf_and_a_changed_value_is_named(half, tmp_path):
    workdir = copy_of(half, tmp_path)
    path = os.path.join(ckdir(workdir), "4", "digest", "metadata")
    digest = json.load(open(path))
    assert len(digest["leaves"]) == len(jax.tree.leaves(half[1]))
    name = "ema_params/1/params/Dense_0/kernel"
    digest["leaves"][name]["sha256"] = "0" * 64
    json.dump(digest, open(path, "w"))
    with pytest.raises(CheckpointError, match=f"digest mismatch in {name}\\)"):
        Checkpointer(workdir, read_only=True).restore(like(), 4)


def test_resume_step_that_fails_verification_is_an_error_not_a_fallback(half, tmp_path):
    workdir = copy_of(half, tmp_path)
    invert_bytes(workdir, 4)
    with pytest.raises(CheckpointError) as err:
        run(workdir, console=False, resume_step=4)
    assert str(err.value).startswith("resume_step=4: checkpoint step 4 is damaged (digest ")
    assert str(err.value).endswith("moved aside to 4.corrupt; saved steps: [2]")
    assert steps(workdir) == [2]  # nothing trained, nothing superseded
