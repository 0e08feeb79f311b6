"""``scripts/torchrun_fit.sh`` as two "nodes" on one machine: two torchrun launches (``NNODES=2``,
``MASTER_ADDR=127.0.0.1``, one process each, c10d rendezvous), sharing the run folder as nodes share a
filesystem. Node 1 is SIGKILLed mid-training (agent and worker at once, as when a machine dies) and started
again; node 0's agent restarts its worker (``MAX_RESTARTS``), both resume from ``last.ckpt`` and
the run completes every epoch.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_dataset, sigkill_all
from helpers import free_port
from test_distributed import TINY_MODEL, subprocess_env
from test_resume import wait

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

EPOCHS = 4  # node 1 dies after the first epoch's checkpoint: the restarted run has epochs left to train
TIMEOUT = 300


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (``/proc``): torchrun starts each worker in a session of
    its own, so killing the agent's process group would leave the worker training."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the state
        except OSError:
            continue  # the process has exited meanwhile
        parents.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL the agent and its workers at once, as when the machine dies."""
    sigkill_all(process_tree(node.pid))
    node.wait()


def launch(node_rank: int, env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen:
    node_env = dict(env, NODE_RANK=str(node_rank))
    return subprocess.Popen(
        ["bash", str(REPO / "scripts" / "torchrun_fit.sh"), *args],
        env=node_env,
        cwd=log.parent,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_two_torchrun_nodes_survive_one_node_being_killed_and_restarted(tmp_path, cpu_env, isolated_cache):
    data = make_dataset(tmp_path / "gems", train_per_class=10, test_per_class=1)
    env = subprocess_env(cpu_env, isolated_cache, threads=1)
    env.update(
        NNODES="2",
        NPROC_PER_NODE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RUN_ID="two-nodes",
        RUN_DIR=str(tmp_path / "run"),
        MAX_RESTARTS="3",
        PYTHON=sys.executable,
        CONFIG=str(REPO / "configs" / "quickstart.yaml"),
        DDP_CONFIG=str(REPO / "configs" / "ddp_cpu.yaml"),
    )
    args = [
        "--data.data_dir",
        data,
        "--data.generate",
        "null",
        "--data.image_size",
        "32",
        "--data.batch_size",
        "4",
        "--data.loader.num_workers",
        "1",
        *TINY_MODEL,
        "--trainer.max_epochs",
        str(EPOCHS),
        "--trainer.enable_progress_bar",
        "false",
        "--summary.max_depth",
        "0",
        "--trainer.logger.init_args.save_dir",
        tmp_path / "run" / "logs",
    ]
    args = [str(arg) for arg in args]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    started = time.monotonic()
    nodes = [launch(rank, env, args, logs[rank]) for rank in (0, 1)]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + TIMEOUT
        while not last.exists():  # the first epoch is done: kill node 1 in the middle of the next ones
            assert time.monotonic() < deadline and all(node.poll() is None for node in nodes), (
                logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
            )
            time.sleep(0.2)
        kill_node(nodes[1])
        killed_at = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
        time.sleep(2)
        nodes[1] = launch(1, env, args, logs[1])
        statuses = [wait(node, log, TIMEOUT) for node, log in zip(nodes, logs)]
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_node(node)  # its workers too: they are not in the agent's process group
    output = [log.read_text() for log in logs]
    assert statuses == [0, 0], f"exit statuses {statuses}:\n{output[0][-3000:]}\n---\n{output[1][-3000:]}"
    assert "Restored all states from the checkpoint" in output[0], "the restarted workers resume from last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["epoch"] == EPOCHS - 1, saved["epoch"]
    assert killed_at < EPOCHS - 1
    print(
        f"two torchrun nodes: node 1 killed after epoch {killed_at}, restarted; "
        f"completed {saved['epoch'] + 1} epochs in {time.monotonic() - started:.0f} s"
    )
