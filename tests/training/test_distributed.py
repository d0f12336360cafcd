"""Training past one process: ``train --nproc 2`` (DDP over gloo), its resume, and ``--parallel`` seeds.

Every run is a tiny DHMD on a small generated MMSA-layout pickle.  The 2-process runs are real
processes started by the CLI (as a user would); the tests check they never outlive their command.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from test_train_helpers import TINY, make_pickle, set_args

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NO_DROPOUT = ["model.attn_dropout=0", "model.relu_dropout=0", "model.res_dropout=0", "model.embed_dropout=0",
              "model.out_dropout=0"]
# Losses that are means over the frames of a batch (L_rec, L_cyc, L_ort) or built from its triplets
# (L_mar, L_ctr) are taken over each process's share of a batch (as any DDP run does with a batch-level
# loss): the equivalence test weighs them 0 and compares the per-sample terms and the total
PER_SAMPLE_LOSSES = ["model.lambda_dec=0", "model.lambda_dic=0"]
PER_SAMPLE_TERMS = ("task", "dtl_homo", "dtl_hetero", "total")
# the loss of every step of 2 processes vs 1: DDP adds the two half-batch gradients in another order
# than one process sums the whole batch, so the weights part in the last float bits
TOL = 1e-5


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m pipeline.cli ARGS` in a new process group; asserts no process of it survives."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _assert_group_gone(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_group_gone(proc: subprocess.Popen, wait: float = 20.0) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("a training process outlived its command")


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _close(a, b, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=TOL, abs=TOL), path
    else:
        assert a == b, path


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.training.train import run_train

    # 36 train samples in one global batch of 36 (18 a process): an epoch is one step, so each line of
    # metrics.jsonl holds the loss of one step; 9 valid and 9 test samples, so the two processes get
    # uneven shares of what they evaluate
    data = make_pickle(tmp_path / "d.pkl", n_train=36, seed=5)
    settings = TINY + NO_DROPOUT + PER_SAMPLE_LOSSES + ["train.batch_size=36", "train.epochs=4", "train.device=cpu"]
    assert run_train(load_config(None, settings), data=data, out=tmp_path / "one") == 0
    res = _cli("train", "--nproc", "2", "--data", str(data), "--out", str(tmp_path / "two"), *set_args(settings))
    assert res.returncode == 0, res.stderr
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert [h["epoch"] for h in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):      # every step's train losses, the valid losses and metrics after it
        for split in ("train", "valid"):
            _close({k: a[split][k] for k in PER_SAMPLE_TERMS}, {k: b[split][k] for k in PER_SAMPLE_TERMS})
        _close(a["valid_metrics"], b["valid_metrics"])
        assert a["lr"] == b["lr"] and a["best"] == b["best"]
    assert two[0]["train"]["total"] != two[1]["train"]["total"]          # it did learn
    # one set of run files, written by rank 0 only
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == sorted(["best.pt", "config.json", "edges.png", "last.pt", "loss_curves.png", "metrics.jsonl",
                            "results.json"])
    assert "rank" not in res.stdout and res.stdout.count("metrics of best.pt") == 1
    last = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert len(last["rng_ranks"]) == 2
    # the metrics written are those of the whole split: evaluate best.pt in one process
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    for split in ("valid", "test"):
        ev = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "two" / "best.pt"),
                                       "--split", split, "--json", "--set", "train.device=cpu"],
                                catch_exceptions=False)
        assert ev.exit_code == 0, ev.output
        got = json.loads(ev.stdout)
        assert got["n"] == 9
        for name, value in results[split].items():
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-6), (split, name)
    best = next(h for h in two if h["epoch"] == results["best_epoch"])
    for name, value in best["valid_metrics"].items():
        assert results["valid"][name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


# One rank of a 2-process group: a DDP module, one backward, one gather, teardown; prints the native
# threads of the process (their names) while in the group and after leaving it.  The module is left in
# a reference cycle that only the garbage collector frees (automatic collection off), as a finished
# Trainer sometimes is on rank 0.
_RANK_SCRIPT = """
import gc, os, torch
from pipeline.training import distributed
def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
gc.disable()
distributed.setup("cpu")
model = distributed.wrap_model(torch.nn.Linear(4, 1), "cpu")
model(torch.ones(2, 4)).sum().backward()
distributed.all_gather(distributed.current().rank)
inside = threads()
run = {"model": model}
run["run"] = run
del model, run
distributed.teardown()
print(",".join(inside) + "|" + ",".join(threads()))
"""


def _group_threads(names: list[str]) -> list[str]:
    return [n for n in names if "gloo" in n or "tcpstore" in n]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc (Linux) to list threads")
def test_leaving_the_group_ends_its_threads() -> None:
    # The group's native threads (gloo's, rank 0's TCPStore server) must end in teardown: left running
    # while the interpreter exits, they now and then aborted a finished run ("terminate called without an
    # active exception", exit 250 in CI).  Two things kept the group: DDP imports torch.distributed.nn,
    # whose functions bind the group as a default argument when first imported (setup imports it
    # first), and a DDP module not yet collected holds it through its reducer (teardown collects).
    from pipeline.training.distributed import _free_port

    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT], env={**env, "RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(2)]
    try:
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for rank, (proc, (out, err)) in enumerate(zip(procs, results)):
        assert proc.returncode == 0, err
        inside, after = (part.split(",") for part in out.strip().splitlines()[-1].split("|"))
        assert _group_threads(inside), inside            # the group did run threads of its own
        assert not _group_threads(after), (rank, after)


@pytest.mark.slow        # three 2-process runs
def test_killed_distributed_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    data = make_pickle(tmp_path / "d.pkl", n_train=160, seed=3)
    settings = set_args(TINY + ["train.batch_size=8", "train.epochs=3", "train.lr_patience=0", "train.device=cpu",
                                "model.embed_dropout=0.3", "model.attn_dropout=0.2"])
    full = _cli("train", "--nproc", "2", "--data", str(data), "--out", str(tmp_path / "full"), *settings)
    assert full.returncode == 0, full.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train", "--nproc", "2", "--data", str(data),
                             "--out", str(killed), *settings], env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not ((killed / "metrics.jsonl").is_file() and (killed / "last.pt").is_file()):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)          # in epoch 2: the launcher ends both ranks
        proc.wait(timeout=60)
    finally:
        _assert_group_gone(proc)
    assert not (killed / "results.json").exists()
    assert len(_history(killed)) < 3

    resumed = _cli("train", "--nproc", "2", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert _history(killed) == _history(tmp_path / "full")                # bit-identical floats
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    sa = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["model_state"]
    sb = torch.load(killed / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parallel_seeds_equal_seeds_one_after_the_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import load_config
    from pipeline.training.train import run_train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")       # the workers' threads: the same as this process's
    data = make_pickle(tmp_path / "d.pkl", n_train=40, seed=2)
    cfg = load_config(None, TINY + ["train.epochs=2", "train.device=cpu", "model.embed_dropout=0.2"])
    assert run_train(cfg, data=data, out=tmp_path / "serial", seeds="1,2") == 0
    assert run_train(cfg, data=data, out=tmp_path / "parallel", seeds="1,2", parallel=2) == 0
    for seed in (1, 2):
        a = json.loads((tmp_path / "serial" / f"seed-{seed}" / "results.json").read_text())
        b = json.loads((tmp_path / "parallel" / f"seed-{seed}" / "results.json").read_text())
        assert a["seed"] == b["seed"] == seed
        assert a["test"] == b["test"] and a["valid"] == b["valid"] and a["best_epoch"] == b["best_epoch"]
        assert _history(tmp_path / "serial" / f"seed-{seed}") == _history(tmp_path / "parallel" / f"seed-{seed}")
    s1 = json.loads((tmp_path / "serial" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "parallel" / "summary.json").read_text())
    assert s1["metrics"] == s2["metrics"] and s1["seeds"] == s2["seeds"] == [1, 2]
    r1 = json.loads((tmp_path / "serial" / "seed-1" / "results.json").read_text())
    r2 = json.loads((tmp_path / "serial" / "seed-2" / "results.json").read_text())
    assert r1["test"] != r2["test"]                                     # the seeds are different runs


def test_distributed_usage_errors_exit_2(tmp_path: Path) -> None:
    data = make_pickle(tmp_path / "d.pkl", n_train=12, seed=1)
    run = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--parallel", "2",
                                    *set_args(TINY)])
    assert run.exit_code == 2 and "--seeds" in run.stderr
    res = _cli("train", "--nproc", "2", "--data", str(data), "--out", str(tmp_path / "odd"),
               *set_args(TINY + ["train.batch_size=7", "train.device=cpu"]))
    assert res.returncode == 2 and "does not divide" in res.stderr
