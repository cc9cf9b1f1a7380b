"""scripts/sweep.py: points, workdirs, commands (quoting round-trips through a shell), launchers
and the summary table."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "scripts", "sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)
CONFIG = "configs/toy.py:ring8,rf"


def build(*args):
    return sweep.build(["--config=" + CONFIG, "--root=runs/s", *args])


def test_split_values_keeps_brackets_and_quotes():
    assert sweep.split_values("1e-3,3e-4") == ["1e-3", "3e-4"]
    assert sweep.split_values("(0.99,0.999),(0.9,)") == ["(0.99,0.999)", "(0.9,)"]
    assert sweep.split_values("'a,b',c") == ["'a,b'", "c"]
    with pytest.raises(ValueError, match="empty value"):
        sweep.split_values("1,,2")


def test_product_of_choices_one_workdir_and_command_each():
    _, points = build("--config.optimizer.learning_rate=1e-3,3e-4",
                      "--config.training.batch_size=256,512", "--set", "training.num_steps=7",
                      "--python=python3")
    assert [p["overrides"] for p in points] == [
        {"optimizer.learning_rate": lr, "training.batch_size": bs}
        for lr in ("1e-3", "3e-4") for bs in ("256", "512")
    ]
    assert len({p["workdir"] for p in points}) == 4
    assert points[3]["name"] == "p003_learning_rate=3e-4,batch_size=512"
    assert points[3]["argv"] == [
        "python3", "-m", "diffusion_lv.main", f"--config={CONFIG}",
        "--workdir=runs/s/p003_learning_rate=3e-4,batch_size=512",
        "--config.training.num_steps=7", "--config.optimizer.learning_rate=3e-4",
        "--config.training.batch_size=512",
    ]
    assert points[0]["env"] == {}


def test_repeated_key_adds_choices_and_bad_arguments_are_named():
    _, points = build("--config.sampler.nfe=10", "--config.sampler.nfe=20,40")
    assert [p["overrides"]["sampler.nfe"] for p in points] == ["10", "20", "40"]
    with pytest.raises(ValueError, match="'--lr=3'"):
        build("--lr=3")
    with pytest.raises(ValueError, match="needs --tpu=NAME and --zone=ZONE"):
        build("--launcher=tpu", "--tpu=x")
    with pytest.raises(ValueError, match="--gpus_per_run=3 must divide"):
        build("--launcher=gpus", "--gpus=0,1,2,3", "--gpus_per_run=3")


def test_sweep_function_times_product(tmp_path):
    definition = tmp_path / "points.py"
    definition.write_text(
        "def points():\n"
        "    return [{'diffusion.schedule': 'vp', 'training.ema_decays': (0.9, 0.99)},\n"
        "            {'diffusion.schedule': 'rf', 'training.ema_decays': (0.999,)}]\n"
    )
    _, points = build(f"--sweep_fn={definition}:points", "--config.seed=0,1")
    assert [p["overrides"] for p in points] == [
        {"diffusion.schedule": s, "training.ema_decays": d, "seed": seed}
        for s, d in (("vp", "(0.9,0.99)"), ("rf", "(0.999,)")) for seed in ("0", "1")
    ]


def test_tuple_and_space_values_survive_the_shell(tmp_path):
    # What --dry_run prints, run by a real shell, gives main exactly the planned argv.
    _, points = build("--config.training.ema_decays=(0.99,0.999)", "--env", "XLA_FLAGS=--a=1 --b",
                      "--config.data.name=it's")
    line = sweep.shell_line(points[0])
    echo = [sys.executable, "-c", "import json, os, sys; "
            "print(json.dumps([os.environ['XLA_FLAGS'], sys.argv[1:]]))"]
    script = line.replace(shlex.join(points[0]["argv"][:3]), shlex.join(echo), 1)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    flags, argv = json.loads(out.stdout)
    assert flags == "--a=1 --b"
    assert argv == points[0]["argv"][3:]
    assert "--config.training.ema_decays=(0.99,0.999)" in argv
    assert "--config.data.name=it's" in argv


def test_gpus_one_run_per_slot_or_one_run_over_all():
    _, points = build("--launcher=gpus", "--gpus=0,1,2,3", "--config.seed=0,1,2")
    assert [p["env"]["CUDA_VISIBLE_DEVICES"] for p in points] == ["0", "1", "2"]
    _, points = build("--launcher=gpus", "--gpus=0,1,2,3", "--gpus_per_run=4", "--config.seed=0,1")
    assert [p["env"]["CUDA_VISIBLE_DEVICES"] for p in points] == ["0,1,2,3"] * 2
    assert [p["slot"] for p in points] == [0, 0]  # one after another on all four GPUs


def test_tpu_command_runs_main_on_every_worker_with_its_environment():
    _, points = build("--launcher=tpu", "--tpu=my-v4-32", "--zone=us-central2-b",
                      "--project=proj", "--repo_dir=~/code dir", "--env", "XLA_FLAGS=--x --y",
                      "--config.optimizer.learning_rate=1e-3")
    argv = points[0]["argv"]
    assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32",
                        "--zone=us-central2-b", "--project=proj", "--worker=all"]
    assert argv[9].startswith("--command=") and len(argv) == 10
    remote = shlex.split(argv[9].removeprefix("--command="))
    assert remote[:4] == ["cd", "~/code dir", "&&", "PYTHONUNBUFFERED=1"]
    assert remote[4] == "XLA_FLAGS=--x --y"
    assert remote[5:] == [
        "python3", "-m", "diffusion_lv.main", f"--config={CONFIG}",
        "--workdir=runs/s/p000_learning_rate=1e-3", "--distributed=auto",
        "--config.optimizer.learning_rate=1e-3",
    ]
    # The printed local line splits back into the same argv.
    assert shlex.split(sweep.shell_line(points[0])) == argv


def test_dry_run_prints_every_command_and_creates_nothing(tmp_path, capsys):
    root = tmp_path / "sweep"
    code = sweep.main(["--config=" + CONFIG, f"--root={root}", "--config.seed=0,1",
                          "--dry_run"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and not root.exists()
    assert out[0] == "# 2 point(s), launcher local"
    assert [shlex.split(line)[-1] for line in out[2::2]] == ["--config.seed=0", "--config.seed=1"]


def test_local_launch_parallel_and_collect(tmp_path, capsys):
    root = tmp_path / "sweep"
    _, points = sweep.build(["--config=" + CONFIG, f"--root={root}", "--config.seed=0,1,2"])
    for i, point in enumerate(points):  # stand-in runs: write a metrics.json (one fails)
        metrics = {"step": 10, "swd": 0.01 * (i + 1), "swd_ratio": 1.5, "note": "a|b"}
        point["argv"] = [sys.executable, "-c", (
            f"import json, os, sys; os.makedirs({point['workdir']!r}); print('hello {i}'); "
            f"json.dump({metrics!r}, open(os.path.join({point['workdir']!r}, 'metrics.json'), "
            f"'w')); sys.exit({int(i == 2)})"
        )]
    points[2]["argv"][-1] = points[2]["argv"][-1].replace("json.dump", "0 and json.dump")
    codes = sweep.launch(points, str(root), 2)
    assert codes == {points[0]["name"]: 0, points[1]["name"]: 0, points[2]["name"]: 1}
    assert (root / f"{points[1]['name']}.log").read_text() == "hello 1\n"
    table = sweep.summary_table(points).splitlines()
    assert table[0] == "| point | seed | status | step | swd | swd_ratio |"
    assert table[2] == f"| {points[0]['name']} | 0 | done | 10 | 0.01 | 1.5 |"
    assert table[4] == f"| {points[2]['name']} | 2 | no metrics.json | - | - | - |"
    assert sweep.summary_table(points, ["note"]).splitlines()[2].endswith("| a\\|b |")
    # --collect prints the same table and writes ROOT/summary.md
    assert sweep.main(["--config=" + CONFIG, f"--root={root}", "--config.seed=0,1,2",
                          "--collect"]) == 0
    assert capsys.readouterr().out.splitlines() == table
    assert (root / "summary.md").read_text().splitlines() == table


def test_unknown_config_key_is_named_before_anything_runs():
    config = os.path.join(ROOT, CONFIG)
    with pytest.raises(ValueError, match=r"optimizer in .* has no key 'learning_rat'; valid keys: "
                                         r"\[.*'learning_rate'"):
        sweep.build([f"--config={config}", "--root=r", "--config.optimizer.learning_rat=1e-3"])
    with pytest.raises(ValueError, match="training.num_steps in .* has no key 'x'; valid keys: "
                                         "none"):
        sweep.build([f"--config={config}", "--root=r", "--set", "training.num_steps.x=1"])
    assert sweep.main([f"--config={config}", "--root=r", "--config.trainig.seed=1",
                          "--dry_run"]) == 2
    _, points = sweep.build([f"--config={config}", "--root=r", "--config.seed=0,1"])
    assert len(points) == 2
    # The text after ':' reaches get_config: a bad toy set is named before anything runs.
    with pytest.raises(ValueError, match=r"unknown toy config 'ring9,rf'.*'ring8'"):
        sweep.build([f"--config={config.replace('ring8', 'ring9')}", "--root=r"])
    assert points[0]["argv"][3] == f"--config={config}"  # main gets the spec as given


def test_a_misspelled_key_inside_the_base_config_file_is_refused(tmp_path, capsys):
    """A config file that sets ``config.optimizer.lr`` trains with the default learning rate:
    a sweep over it would run N identical jobs. The schema (configs/default.py) refuses it."""
    base = tmp_path / "typo.py"
    base.write_text("from configs import default\n\n\ndef get_config():\n"
                    "    config = default.get_config()\n    config.optimizer.lr = 0.1\n"
                    "    return config\n")
    assert sweep.main([f"--config={base}", f"--root={tmp_path / 'r'}",
                       "--config.seed=0,1", "--dry_run"]) == 2
    error = capsys.readouterr().err
    assert "config.optimizer.lr is not a key" in error
    assert "config.optimizer.learning_rate" in error
    assert not os.path.exists(tmp_path / "r")
