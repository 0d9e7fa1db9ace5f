"""benchmarks/bench_peer.py without the peer venv or the network: its arithmetic, arguments,
the two trainers' command lines and the measurement of one child process."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
import urllib.error
from pathlib import Path

import pytest

from shoelib.paths import PROJECT_ROOT
from shoelib.train import TrainConfig

BENCHMARKS = PROJECT_ROOT / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # bench_peer imports bench_train's model builder
    spec = importlib.util.spec_from_file_location("bench_peer", BENCHMARKS / "bench_peer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peer"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_peer"]
    sys.path.remove(str(BENCHMARKS))


def test_steady_step_is_the_difference_of_two_runs(bench):
    # 2 steps in 50 s and 8 steps in 80 s: the 6 extra steps took 30 s, whatever the loading.
    assert bench.steady_seconds_per_step((2, 50.0), (8, 80.0)) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="more steps"):
        bench.steady_seconds_per_step((8, 80.0), (8, 90.0))


def test_combine_takes_each_repeats_difference_then_the_median(bench):
    def run(steps, wall, first, rss):
        return {"steps": steps, "wall_seconds": wall, "first_step_seconds": first,
                "peak_rss_bytes": rss, "peak_cuda_bytes": None}

    runs = [run(2, 50.0, 20.0, 100), run(8, 80.0, 21.0, 300),   # repeat 1: 5 s/step
            run(2, 60.0, 30.0, 200), run(8, 102.0, 31.0, 400),  # repeat 2: 7 s/step
            run(2, 40.0, 10.0, 250), run(8, 76.0, 11.0, 350)]   # repeat 3: 6 s/step
    out = bench.combine(runs, (2, 8))
    assert out["seconds_per_step_repeats"] == pytest.approx([5.0, 7.0, 6.0])
    assert out["seconds_per_step"] == pytest.approx(6.0)
    assert out["first_step_seconds"] == pytest.approx(20.5)
    assert out["peak_rss_bytes"] == 275
    ratios = bench.compare(out, {**out, "seconds_per_step": 9.0, "peak_rss_bytes": 550,
                                 "first_step_seconds": 41.0})
    assert ratios["speedup"] == pytest.approx(1.5)
    assert ratios["peak_rss"] == pytest.approx(0.5)
    assert ratios["first_step"] == pytest.approx(0.5)


@pytest.mark.parametrize("text", ["8", "8,2", "2,2", "0,4", "two,eight"])
def test_bad_step_counts_are_one_line_naming_steps(bench, capsys, text):
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", text])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--steps" in err and "e.g. 2,8" in err


def test_step_counts_default_and_custom(bench):
    assert bench.parse_args([]).steps == (2, 8)
    assert bench.parse_args(["--steps", "3,10"]).steps == (3, 10)


def flags(cmd: list[str]) -> dict[str, str | bool]:
    """--name value pairs of a command line; a flag without a value is True."""
    out, i = {}, 0
    while i < len(cmd):
        if cmd[i].startswith("--"):
            if i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
                out[cmd[i][2:]] = cmd[i + 1]
                i += 2
                continue
            out[cmd[i][2:]] = True
        i += 1
    return out


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_both_trainers_get_the_same_recipe(bench, tmp_path, checkpointing, device):
    recipe = bench.Recipe(resolution=384, batch_size=3, rank=4, learning_rate=2e-4,
                          gradient_checkpointing=checkpointing, device=device)
    peer = flags(bench.peer_command(Path("peer.py"), recipe, tmp_path / "m", tmp_path / "d",
                                    tmp_path / "o", 7, tmp_path / "peer-cache"))
    ours = TrainConfig.from_dict(bench.ours_config(recipe, tmp_path / "m", tmp_path / "d",
                                                   tmp_path / "o", 7, tmp_path / "our-cache"))
    assert int(peer["resolution"]) == ours.resolution == 384
    assert int(peer["train_batch_size"]) == ours.train_batch_size == 3
    assert int(peer["gradient_accumulation_steps"]) == ours.gradient_accumulation_steps == 1
    assert int(peer["rank"]) == ours.lora_rank == 4
    assert ours.lora_alpha == ours.lora_rank  # the peer's script sets alpha = rank
    assert float(peer["learning_rate"]) == ours.learning_rate == 2e-4
    assert peer["lr_scheduler"] == ours.lr_scheduler == "constant"
    assert int(peer["lr_warmup_steps"]) == ours.lr_warmup_steps == 0
    assert float(peer["max_grad_norm"]) == ours.max_grad_norm == 1.0
    assert int(peer["max_train_steps"]) == ours.max_train_steps == 7
    assert int(peer["seed"]) == ours.seed
    assert peer["random_flip"] is True and ours.random_flip
    assert peer.get("gradient_checkpointing", False) is checkpointing
    assert ours.gradient_checkpointing is checkpointing
    assert peer["mixed_precision"] == ("bf16" if device == "cuda" else "no")
    assert ours.device == device  # our device policy: bf16 on CUDA, float32 on CPU
    assert int(peer["checkpointing_steps"]) > 7  # no checkpoint inside the timed run
    assert ours.validation_every == 0 and peer.get("validation_prompt") is None
    assert peer["train_data_dir"] == str(tmp_path / "d") and ours.train_dir == str(tmp_path / "d")
    assert peer["cache_dir"] == str(tmp_path / "peer-cache")
    assert ours.cache_dir == str(tmp_path / "our-cache")


def test_the_table_shows_each_trainer_and_the_targets(bench, capsys):
    def figures(step, rss):
        return {"seconds_per_step": step, "first_step_seconds": 30.0, "peak_rss_bytes": rss,
                "peak_cuda_bytes": None, "in_loop_seconds_per_step": step * 0.9,
                "cold_run": {"first_step_seconds": 90.0}}

    ours, peer = figures(4.0, 4.0e9), figures(6.0, 5.0e9)
    summary = {"recipe": vars(bench.Recipe()), "steps": [2, 8], "repeats": 2, "threads": 2,
               "n_images": 32, "precision": "float32",
               "allocator": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
               "results": {"off": {"ours": ours, "peer": peer,
                                   "ours_over_peer": bench.compare(ours, peer)}}}
    bench.print_table(summary)
    out = capsys.readouterr().out
    assert "(t(8) - t(2)) / 6" in out
    assert "allocator: MALLOC_MMAP_THRESHOLD_=1048576" in out
    assert re.search(r"off +shoelib +4\.00 +3\.60 +30\.0 +90\.0 +4\.00", out)
    assert re.search(r"off +diffusers script +6\.00", out)
    assert re.search(r"off +ours/peer +0\.67 +1\.00 +0\.80", out)
    assert "1.50x faster per steady step (target >= 1.3x: met)" in out
    assert "peak RSS 0.80x the peer's (target <= 0.85: met)" in out


def test_launch_measures_first_step_and_peak_rss(bench, tmp_path):
    # A stand-in trainer: 300 MB resident, another bar at once (loading), then its step bar,
    # which reaches step 1 3 s later; it exits 0.3 s after that.
    script = tmp_path / "trainer.py"
    script.write_text(
        "import sys, time\n"
        "block = bytearray(300 * 2**20)\n"
        "sys.stderr.write('Loading weights: 100%|##########| 1/1 [00:00<00:00]\\n')\n"
        "sys.stderr.write('Steps:   0%|          | 0/2 [00:00<?, ?it/s]'); sys.stderr.flush()\n"
        "time.sleep(3.0)\n"
        "sys.stderr.write('\\rSteps:  50%|#####     | 1/2 [00:00<00:00, 2.0it/s]')\n"
        "sys.stderr.flush()\n"
        "time.sleep(0.3)\n")
    run = bench.launch([str(script)], bench.child_env(1, tmp_path), "Steps")
    assert run["first_step_seconds"] >= 3.0
    assert 0.3 <= run["wall_seconds"] - run["first_step_seconds"] < 2.5  # not the loading bar
    assert run["peak_rss_bytes"] > 300 * 2**20
    assert run["peak_cuda_bytes"] is None  # no CUDA here


def test_a_failing_trainer_names_its_command_and_output(bench, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("raise SystemExit('error: no such model')\n")
    with pytest.raises(bench.BenchError, match=r"broken.py exited with 1:\n.*no such model"):
        bench.launch([str(script)], bench.child_env(1, tmp_path), "Steps")


def test_without_network_the_error_names_peer_script(bench, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(bench.urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit) as err:
        bench.peer_script(None, tmp_path)
    message = str(err.value)
    assert "--peer-script PATH" in message and "v0.42.1" in message and "\n" not in message
    with pytest.raises(SystemExit, match="--peer-script .* is not a file"):
        bench.peer_script(tmp_path / "absent.py", tmp_path)


def test_an_interpreter_without_torchvision_is_told_to_build_the_peer_venv(bench, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name: None if name == "torchvision" else real(name))
    with pytest.raises(SystemExit, match=r"no torchvision.*bash benchmarks/bench_peer.sh"):
        bench.check_interpreter()


def test_images_are_copied_as_an_imagefolder(bench, tmp_path):
    from PIL import Image

    source = tmp_path / "split"
    source.mkdir()
    rows = []
    for i in range(3):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(source / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"photo {i}", "colour": "Black"})
    (source / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = bench.prepare_images(source, tmp_path / "train", 2)
    assert sorted(p.name for p in dest.iterdir()) == ["0.png", "1.png", "metadata.jsonl"]
    lines = [json.loads(line) for line in (dest / "metadata.jsonl").read_text().splitlines()]
    assert lines == [{"file_name": "0.png", "text": "photo 0"},
                     {"file_name": "1.png", "text": "photo 1"}]
    with pytest.raises(SystemExit, match="holds 3 photos; --n-images 4"):
        bench.prepare_images(source, tmp_path / "train", 4)
    with pytest.raises(SystemExit, match=r"--images .*absent.*pass --images DIR"):
        bench.prepare_images(tmp_path / "absent", tmp_path / "train", 2)


def test_gpu_check_dry_run_prints_one_json_object(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: the whole Python part on CPU with the tiny model."""
    import os
    import subprocess

    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run", "--work",
                           str(tmp_path / "work")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # stdout is the JSON object and nothing else
    assert report == json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    train, generate = report["train"], report["generate"]
    assert train["steps"] == [1, 2] and train["recipe"]["mixed_precision"] == "no"
    # Two runs of 1 and 2 tiny steps differ by noise: the figure is a number, not a measure.
    assert math.isfinite(train["ours"]["it_per_second"]) and train["ours"]["peak_rss_bytes"] > 0
    assert train["ours"]["in_loop_seconds_per_step"] > 0
    assert "skipped" in train["peer"]
    assert "it_per_second" in train["ours_torch_compile"] or "skipped" in train["ours_torch_compile"]
    assert generate["images"] == 1 and generate["steps"] == 2 and generate["images_per_second"] > 0


def test_profile_says_where_our_steps_time_and_memory_go(bench, tmp_path):
    """--profile's child on the tiny pipeline: the profiler's tables and the RSS breakdown."""
    import subprocess

    from bench_train import make_split

    from shoelib.tiny_sd import ensure_tiny_sd

    model = ensure_tiny_sd(tmp_path / "tiny-sd")
    data = make_split(tmp_path / "train", n=2)
    recipe = bench.Recipe(resolution=64)
    config = tmp_path / "profile.json"
    config.write_text(json.dumps(bench.ours_config(recipe, model, data, tmp_path / "out", 2,
                                                   tmp_path / "cache")))
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_peer.py"), "--child-profile",
                           str(config)], capture_output=True, text=True,
                          env=bench.child_env(1, tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Self CPU time total" in done.stdout and "Self CPU Mem" in done.stdout
    assert re.search(r"aten::(addmm|mm|convolution|_convolution|mkldnn_convolution)", done.stdout)
    assert re.search(r"peak RSS \d+\.\d\d GB, of which the UNet's float32 weights 0\.\d\d GB",
                     done.stdout)


def test_the_allocator_settings_both_trainers_inherit_are_recorded(bench, monkeypatch):
    for name in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name)
    assert bench.allocator_settings() == {}
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert bench.allocator_settings() == {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0",
                                          "MALLOC_MMAP_THRESHOLD_": "1048576"}
    env = bench.child_env(2, Path("/tmp/w"))
    assert env["MALLOC_MMAP_THRESHOLD_"] == "1048576"  # the children get them too
