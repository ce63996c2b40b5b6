"""Training in several processes (torchrun, gloo on the CPU): the launch commands, what is
refused before any work, and the runs: 2 processes with accumulation 1 against 1 process with
accumulation 2, SIGKILL of one worker, SIGTERM to the launching command, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sft_pipeline.config import RecipeError, recipe_from_dict
from sft_pipeline.training import launch, strategy
from tests.helpers import lima_rows, write_jsonl


def _dist(**values):
    return recipe_from_dict({"distributed": values}).distributed


# ---- the launch command ---------------------------------------------------------------------

def test_one_node_runs_torchrun_standalone(tmp_path):
    dist = _dist(nproc_per_node=2)
    rdzv = launch.rendezvous(dist, "demo", env={})
    cmd = launch.command(dist, rdzv, tmp_path / "run", tmp_path / "out", python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "--local-addr",
                   "127.0.0.1", "-m", "sft_pipeline.train_worker", str(tmp_path / "run"), str(tmp_path / "out")]


def test_numa_binding_goes_to_torchrun(tmp_path):
    dist = _dist(nproc_per_node=2, numa_binding="socket")
    cmd = launch.command(dist, launch.rendezvous(dist, "x", env={}), Path("r"), Path("o"), python="py")
    assert cmd[cmd.index("--numa-binding") + 1] == "socket"


def test_multi_node_command_takes_rank_and_endpoint_from_torchrun_variables(tmp_path):
    dist = _dist(nproc_per_node=4, nnodes=2)
    rdzv = launch.rendezvous(dist, "my run", env={"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "29400"})
    cmd = launch.command(dist, rdzv, Path("r"), Path("o"), python="py")
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    flags = dict(zip(cmd[3:-4:2], cmd[4:-4:2]))
    assert flags == {"--nproc-per-node": "4", "--nnodes": "2", "--node-rank": "1", "--rdzv-backend": "c10d",
                     "--rdzv-endpoint": "10.0.0.2:29400", "--rdzv-id": "my_run", "--rdzv-conf": "is_host=0"}


def test_multi_node_command_under_slurm():
    dist = _dist(nproc_per_node=8, nnodes=3)
    env = {"SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[03-05,07]", "SLURM_JOB_ID": "4711"}
    assert launch.rendezvous(dist, "x", env=env) == launch.Rendezvous(2, "gpu03:29500", "4711")
    assert launch.first_slurm_host("cpu1,cpu2") == "cpu1"


def test_the_recipe_wins_over_the_environment():
    dist = _dist(nproc_per_node=1, nnodes=2, node_rank=0, rdzv_endpoint="head:1234", rdzv_id="job")
    assert launch.rendezvous(dist, "x", env={"NODE_RANK": "1", "MASTER_ADDR": "other"}) == \
        launch.Rendezvous(0, "head:1234", "job")


@pytest.mark.parametrize("env, words", [
    ({"MASTER_ADDR": "h"}, "rank is unknown"),
    ({"NODE_RANK": "1"}, "no rendezvous endpoint"),
    ({"NODE_RANK": "5", "MASTER_ADDR": "h"}, "not in 0..1"),
])
def test_several_nodes_without_rank_or_endpoint_are_refused_in_one_line(env, words):
    with pytest.raises(launch.LaunchError, match=words) as err:
        launch.rendezvous(_dist(nnodes=2), "x", env=env)
    assert "\n" not in str(err.value)


def test_accelerate_command_uses_its_torch_distributed_launcher(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process (accelerate #2741)."""
    dist = _dist(nproc_per_node=2, nnodes=2, launcher="accelerate", rdzv_endpoint="h:29500", node_rank=1)
    cmd = launch.command(dist, launch.rendezvous(dist, "x", env={}), Path("r"), Path("o"),
                         accelerate_config=tmp_path / "fsdp.yaml", python="py")
    assert "--cpu" not in cmd and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "4" and cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[cmd.index("--config_file") + 1] == str(tmp_path / "fsdp.yaml")
    assert cmd[cmd.index("--main_process_ip") + 1] == "h"


def test_workers_share_the_cores():
    env = launch.worker_env(_dist(nproc_per_node=2), 1, env={}, cores=16)
    assert env["OMP_NUM_THREADS"] == env["SFT_PIPELINE_THREADS"] == "8" and env[launch.WORKER_ENV] == "1"
    assert env["SFT_PIPELINE_NODE_RANK"] == "1"
    assert launch.worker_env(_dist(nproc_per_node=2, threads_per_process=3), env={})["OMP_NUM_THREADS"] == "3"
    assert "SFT_PIPELINE_THREADS" not in launch.worker_env(_dist(nproc_per_node=2), env={"OMP_NUM_THREADS": "4"})


def test_a_command_under_someone_elses_torchrun_is_refused():
    with pytest.raises(launch.LaunchError, match="launches the workers itself"):
        launch.needs_launch(_dist(nproc_per_node=2), env={"WORLD_SIZE": "2"})
    assert launch.needs_launch(_dist(nproc_per_node=2), env={}) is True
    assert launch.needs_launch(_dist(), env={}) is False
    # the worker variable chooses nothing: a worker trains without asking (train_worker.py), and a
    # command that finds itself in a worker's environment is refused like any other under torchrun
    with pytest.raises(launch.LaunchError, match="launches the workers itself"):
        launch.needs_launch(_dist(nproc_per_node=2), env={launch.WORKER_ENV: "1", "WORLD_SIZE": "2"})


def _worker_run_dir(tmp_path: Path):
    """A run directory and a train work folder as the launching command leaves them for its
    workers: the recipe written, the folder's fingerprint that recipe's."""
    from sft_pipeline import stages
    from sft_pipeline.config import recipe_to_yaml

    recipe = recipe_from_dict({"run_dir": str(tmp_path / "run"), "distributed": {"nproc_per_node": 2}})
    run_dir = stages.open_run_directory(tmp_path / "run", recipe)
    run_dir.path.mkdir()
    (run_dir.path / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    out = run_dir.work_dir("train")
    out.mkdir(parents=True)
    (out / ".fingerprint").write_text(run_dir.fingerprint("train"))
    return run_dir, out


def test_a_worker_calls_the_training_not_the_stage(tmp_path, monkeypatch):
    """The worker trains; the stage, which decides whether to launch, is never entered again."""
    from sft_pipeline import stages, train_worker
    from sft_pipeline.stages import train as train_stage
    from sft_pipeline.training import session

    def stage_entered(*args):
        raise AssertionError("the train worker entered the train stage")

    run_dir, out = _worker_run_dir(tmp_path)
    calls = []
    monkeypatch.setattr(train_stage, "produce", stage_entered)
    monkeypatch.setattr(stages, "producer", lambda name: stage_entered)
    monkeypatch.setattr(session, "train", lambda run, folder: calls.append((run.path, run.recipe.distributed, folder)))
    monkeypatch.setattr(launch, "needs_launch", stage_entered)  # asked by the stage only
    monkeypatch.setattr("sft_pipeline.model.hardware.configure_threads", lambda: None)
    monkeypatch.setenv(launch.WORKER_ENV, "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    train_worker.main([str(run_dir.path), str(out)])
    assert calls == [(run_dir.path, run_dir.recipe.distributed, out)]


def test_a_worker_not_started_by_the_launcher_is_refused(tmp_path, monkeypatch, capsys):
    from sft_pipeline import train_worker

    run_dir, out = _worker_run_dir(tmp_path)
    monkeypatch.delenv(launch.WORKER_ENV, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as end:
        train_worker.main([str(run_dir.path), str(out)])
    assert end.value.code == 2 and "not started by the train stage's launcher" in capsys.readouterr().err


def test_a_node_other_than_0_returns_that_its_train_is_recorded_elsewhere(tmp_path, monkeypatch, capsys):
    """Node 1's command trains (its workers run) and then says, by its return value, that node 0
    records the result: no SystemExit, nothing for this run directory."""
    from sft_pipeline import stages
    from sft_pipeline.rundir.stage_spec import RecordedElsewhere
    from sft_pipeline.stages import train as train_stage

    recipe = recipe_from_dict({"run_dir": str(tmp_path / "run"), "distributed": {
        "nproc_per_node": 1, "nnodes": 2, "node_rank": 1, "rdzv_endpoint": "127.0.0.1:29400"}})
    run_dir = stages.open_run_directory(tmp_path / "run", recipe)
    launched = []
    monkeypatch.setattr(launch, "run_workers", lambda cmd, env, here, world: launched.append((cmd, here, world)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    made = train_stage.produce(run_dir, tmp_path / "out")
    assert made == RecordedElsewhere("node 0's run directory")
    assert len(launched) == 1 and launched[0][1:] == (1, 2) and "--node-rank" in launched[0][0]
    assert "node 1 of 2: its processes finished" in " ".join(capsys.readouterr().err.split())
    # node 0 records train, and finds its first process's metrics or says it did not
    monkeypatch.setattr(run_dir, "recipe", recipe.model_copy(update={"distributed": recipe.distributed.model_copy(
        update={"node_rank": 0})}))
    with pytest.raises(launch.LaunchError, match="without node 0's first process writing"):
        train_stage.produce(run_dir, tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("{}")
    assert train_stage.produce(run_dir, tmp_path / "out") is None


@pytest.mark.parametrize("values, words", [
    ({"strategy": "zero9"}, "expected one of ddp"),
    ({"rdzv_endpoint": "nohost"}, "host:port"),
    ({"nnodes": 2, "node_rank": 2}, "ranks are 0..1"),
])
def test_bad_distributed_sections_are_refused(values, words):
    with pytest.raises(RecipeError, match=words):
        _dist(**values)


# ---- strategies -----------------------------------------------------------------------------

def _recipe(**tree):
    return recipe_from_dict(tree)


def test_strategy_arguments():
    assert strategy.strategy_args(_dist(), "cpu") == {}
    assert strategy.strategy_args(_dist(nproc_per_node=2), "cpu") == {"ddp_backend": "gloo",
                                                                      "ddp_find_unused_parameters": False}
    fsdp = strategy.strategy_args(_dist(nproc_per_node=2, strategy="fsdp2"), "cuda")
    assert fsdp["ddp_backend"] == "nccl" and fsdp["fsdp_config"]["version"] == 2
    zero = strategy.strategy_args(_dist(nproc_per_node=2, strategy="zero3_offload"), "cuda")["deepspeed"]
    assert zero["zero_optimization"]["stage"] == 3
    assert zero["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert strategy.strategy_args(_dist(nproc_per_node=2, strategy="ds.json"), "cuda")["deepspeed"] == "ds.json"


@pytest.mark.parametrize("tree, device, words", [
    ({"method": "qlora", "distributed": {"nproc_per_node": 2, "strategy": "fsdp2"}}, "cuda", "bitsandbytes #970"),
    ({"distributed": {"nproc_per_node": 2, "strategy": "mine.yaml"}}, "cuda", "set distributed.launcher: accelerate"),
    # FSDP2 is tested on GPUs only: accelerate keeps CPU processes in DDP (its MULTI_CPU state)
    ({"distributed": {"nproc_per_node": 2, "strategy": "fsdp2"}}, "cpu", "accelerate applies FSDP to GPU processes only"),
    ({"distributed": {"nproc_per_node": 2, "backend": "nccl"}}, "cpu", "nccl needs GPUs"),
    ({"distributed": {"nproc_per_node": 2, "numa_binding": "node"}}, "cpu", "NUMA node of its GPU"),
])
def test_known_failures_are_refused_before_work(tree, device, words):
    assert words in strategy.refusal(_recipe(**tree), device)


def test_zero_needs_deepspeed_and_gpus():
    why = strategy.refusal(_recipe(distributed={"nproc_per_node": 2, "strategy": "zero3"}), "cpu")
    assert "DeepSpeed" in why
    assert strategy.refusal(_recipe(distributed={"nproc_per_node": 2}), "cpu") is None
    assert strategy.refusal(_recipe(method="qlora", distributed={"nproc_per_node": 2}), "cuda") is None


def test_extra_args_cannot_set_the_strategy():
    from sft_pipeline.training.sft_args import TrainConfigError, check_extra_args

    with pytest.raises(TrainConfigError, match="set distributed.strategy"):
        check_extra_args({"fsdp": "full_shard"})


def test_an_empty_saved_adapter_is_an_error(tmp_path):
    """What ZeRO-3 has been seen to save (TRL #4416): the tensors' names with no values."""
    import torch
    from safetensors.torch import save_file

    from sft_pipeline.training.export import ExportError, check_saved

    save_file({"base_model.model.layers.0.q.lora_A.weight": torch.zeros(0)}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="1 saved tensors are empty"):
        check_saved(tmp_path, full=False, model=torch.nn.Linear(2, 2))


def test_the_labelled_loss_through_the_forward_is_the_models_loss(tiny_model_dir):
    """The loss a DDP-wrapped model trains with equals the model's own, and so do its gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    from sft_pipeline.training.loss import labelled_loss_by_forward

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 12))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, :9] = -100
    own = model(input_ids=ids, labels=labels).loss
    own.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got, count = labelled_loss_by_forward(model, {"input_ids": ids, "labels": labels})
    got.backward()
    assert count == 10  # labels at positions 5..11 of row 0 and 9..11 of row 1
    torch.testing.assert_close(got, own, rtol=1e-6, atol=1e-6)
    for w, p in zip(want, model.parameters()):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-7)


# ---- the runs: 2 processes on this CPU, gloo --------------------------------------------------

STEPS = 96  # enough that a stop sent after checkpoint-8 lands mid-run on a fast CPU (~50 steps/s here)


def _lima(folder: Path) -> Path:
    """Rows of unequal length (and multi-turn ones), so packed blocks carry unequal token and label counts."""
    write_jsonl(folder / "train.jsonl", lima_rows(40, multi_every=3))
    write_jsonl(folder / "test.jsonl", lima_rows(4))
    return folder


def _recipe_file(root: Path, name: str, model_dir: Path, data: Path, processes: int, accumulation: int,
                 run_name: str | None = None, steps: int = STEPS, **distributed: object) -> Path:
    tree = {
        "name": run_name or name, "run_dir": str(root / name), "data": {"source": str(data)}, "model": {"ref": str(model_dir)},
        "pack": {"seq_length": 48, "strategy": "bfd"}, "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "train": {"max_steps": steps, "per_device_train_batch_size": 1, "gradient_accumulation_steps": accumulation,
                  "logging_steps": 1, "eval_strategy": "no", "save_strategy": "steps", "save_steps": 4,
                  "save_total_limit": None, "learning_rate": 0.01, "precision": "fp32"},
        "tracking": {"wandb": "off", "tensorboard": False},
        "distributed": {"nproc_per_node": processes, **distributed},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "sft_pipeline.cli", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SFT_PIPELINE_THREADS": "1"}


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "train" / "scalars.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in sorted((r for r in rows if r["kind"] == "train"), key=lambda r: r["train/global_step"])]


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "train" / "adapter" / "adapter_model.safetensors")


def _close(a: dict, b: dict, rtol: float) -> None:
    import torch

    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=1e-7, msg=key)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir) -> dict:
    """load..prepare once, in this process, for every run here: none of them reads a key those
    stages depend on differently (processes, accumulation, steps, launcher and nodes are train's),
    so each scenario copies this folder (_copy) and its command finds them up to date."""
    from sft_pipeline.config import load_recipe
    from sft_pipeline.orchestration.pipeline import update_stages

    root = tmp_path_factory.mktemp("distributed")
    data = _lima(root / "data")
    path = _recipe_file(root, "prepared", tiny_model_dir, data, 2, 1)
    update_stages(load_recipe(path), until="prepare")
    return {"root": root, "data": data, "prepared": root / "prepared"}


def _copy(prepared: dict, name: str, model_dir: Path, processes: int, accumulation: int, **options: object) -> Path:
    """The prepared run directory copied to `name`, and that run's recipe file."""
    import shutil

    shutil.copytree(prepared["prepared"], prepared["root"] / name)
    return _recipe_file(prepared["root"], name, model_dir, prepared["data"], processes, accumulation, **options)


@pytest.fixture(scope="module")
def runs(prepared, tiny_model_dir):
    """Uninterrupted runs: 2 processes x accumulation 1, 1 process x accumulation 2."""
    made = dict(prepared)
    for name, procs, accum in (("two", 2, 1), ("one", 1, 2)):
        path = _copy(prepared, name, tiny_model_dir, procs, accum)
        done = subprocess.run(_cli("run", path, "--until", "train"), capture_output=True, text=True, env=_env())
        assert done.returncode == 0, done.stderr[-4000:]
        assert "prepare: up to date" in " ".join(done.stderr.split())  # the copy, not a second prepare
        made[name] = (prepared["root"] / name, done.stderr)
    return made


@pytest.mark.slow
def test_two_processes_equal_one_process_with_twice_the_accumulation(runs):
    two, one = runs["two"][0], runs["one"][0]
    metrics = json.loads((two / "train" / "metrics.json").read_text())
    dist = metrics["distributed"]
    # each worker reports the world size it saw: a launcher that started one process fails here
    assert dist["world_size"] == 2 and sorted(p["rank"] for p in dist["processes"]) == [0, 1]
    assert all(p["world_size"] == 2 for p in dist["processes"])
    assert json.loads((one / "train" / "metrics.json").read_text())["distributed"]["world_size"] == 1
    assert metrics["labelled_loss"].startswith("on: through"), metrics["labelled_loss"]
    # MFU: the work of both processes against the rate of both (each measured with its share)
    assert "x 2 processes" in " ".join(runs["two"][1].split())
    want, got = _losses(one), _losses(two)
    assert len(got) == len(want) == STEPS
    assert max(abs(a - b) / abs(a) for a, b in zip(want, got)) < 1e-5, (want, got)
    _close(_adapter(one), _adapter(two), rtol=1e-5)
    # only rank 0 wrote: the stage folder is exactly what train declares
    from sft_pipeline import stages
    from sft_pipeline.rundir.directory import COMPLETE

    assert stages.spec("train").write_problems(two / "train", ignore={COMPLETE}) == []


def _torchrun(pid: int) -> int:
    """The torchrun process the sft-pipeline command started."""
    kids = launch._children(pid)
    assert len(kids) == 1, kids
    return kids[0]


def _crash(runs, name: str, sig: int, tiny_model_dir: Path) -> tuple[Path, subprocess.CompletedProcess]:
    root = runs["root"]
    path = _copy(runs, name, tiny_model_dir, 2, 1)
    proc = subprocess.Popen(_cli("train", path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env())
    checkpoints = root / name / ".partial" / "train" / "checkpoints"
    deadline = time.time() + 240
    while not (checkpoints / "checkpoint-8").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be stopped"
    if sig == signal.SIGKILL:  # one worker, rank 1
        victims = [p for p in launch.workers_of(_torchrun(proc.pid)) if launch.rank_of(p) == 1]
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
    else:  # the launching command, as `docker stop` would
        os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=240)
    manifest = json.loads((root / name / "manifest.json").read_text())
    assert "train" not in manifest["stages"] and not (root / name / "train").exists()  # nothing recorded complete
    return path, subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_two_process_run_resumes_to_the_uninterrupted_result(runs, tiny_model_dir, sig):
    path, stopped = _crash(runs, f"stopped-{int(sig)}", sig, tiny_model_dir)
    last = stopped.stderr.strip().splitlines()[-1]
    if sig == signal.SIGKILL:
        assert stopped.returncode == 2 and last.startswith("error: train: a training process failed"), last
    else:
        assert stopped.returncode == 143, stopped.stderr[-3000:]
        assert "SIGTERM: passed to 2 worker processes" in stopped.stderr, stopped.stderr[-3000:]
    done = subprocess.run(_cli("train", path), capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Resuming" in done.stderr
    _close(_adapter(runs["two"][0]), _adapter(path.parent / path.stem), rtol=1e-6)


@pytest.mark.slow
def test_accelerate_launch_starts_both_processes_and_gives_the_torchrun_result(runs, tiny_model_dir):
    """`accelerate launch` as the launcher: both processes start (its --cpu path would start one:
    accelerate #2741), and they train what torchrun's two do."""
    path = _copy(runs, "accelerate", tiny_model_dir, 2, 1, launcher="accelerate")
    done = subprocess.run(_cli("run", path, "--until", "train"), capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr[-4000:]
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in " ".join(done.stderr.split())
    dist = json.loads((runs["root"] / "accelerate" / "train" / "metrics.json").read_text())["distributed"]
    assert dist["engine"] == "MULTI_CPU" and dist["world_size"] == 2
    assert all(p["world_size"] == 2 for p in dist["processes"])
    _close(_adapter(runs["two"][0]), _adapter(runs["root"] / "accelerate"), rtol=1e-5)


@pytest.mark.slow
def test_two_nodes_on_one_machine_give_the_two_process_result(runs, tiny_model_dir):
    """Two launching commands, as two VMs would run them (one process each, a c10d endpoint on
    node 0): node 0 records train with the 2-process result; node 1 ends without recording."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = {}
    for rank in (0, 1):
        path = _copy(runs, f"node{rank}", tiny_model_dir, 1, 1, run_name="two-nodes",
                     nnodes=2, node_rank=rank, rdzv_endpoint=f"127.0.0.1:{port}")
        procs[rank] = subprocess.Popen(_cli("run", path, "--until", "train"), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, env=_env())
    out = {rank: proc.communicate(timeout=300)[1] for rank, proc in procs.items()}
    assert procs[0].returncode == 0 and procs[1].returncode == 0, out[0][-3000:] + out[1][-3000:]
    assert "node 1 of 2: its processes finished" in out[1]
    manifests = {r: json.loads((runs["root"] / f"node{r}" / "manifest.json").read_text())["stages"] for r in (0, 1)}
    assert "train" in manifests[0] and "train" not in manifests[1]
    dist = json.loads((runs["root"] / "node0" / "train" / "metrics.json").read_text())["distributed"]
    assert sorted(p["node_rank"] for p in dist["processes"]) == [0, 1]
    _close(_adapter(runs["two"][0]), _adapter(runs["root"] / "node0"), rtol=1e-5)


@pytest.mark.slow
def test_ctrl_c_to_the_launching_command_leaves_no_worker_running(prepared, tiny_model_dir):
    """SIGINT to the command alone (not its process group, as `kill -INT` sends it): it ends
    with status 130, and torchrun stops the workers rather than leaving them training."""
    root = prepared["root"]
    path = _copy(prepared, "interrupted", tiny_model_dir, 2, 1, steps=5000)
    # SIGINT as a terminal delivers it: a suite started in the background (`make test &`) ignores it,
    # and a child inherits that, so Python would install no KeyboardInterrupt handler in the command
    proc = subprocess.Popen(_cli("train", path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoints = root / "interrupted" / ".partial" / "train" / "checkpoints"
    deadline = time.time() + 240
    while not (checkpoints / "checkpoint-4").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be interrupted"
    workers = launch.workers_of(_torchrun(proc.pid))
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
