"""Training runs unchanged under torchrun with DDP: 2 CPU processes on the gloo backend."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={_free_port()}", str(worker), str(tmp_path)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["epochs"] == ranks[1]["epochs"] == 2
    assert ranks[0]["backbone"] == ranks[1]["backbone"]
    assert ranks[0]["steering"] == ranks[1]["steering"]
    assert ranks[0]["budget_epochs"] == ranks[1]["budget_epochs"] < 1000
    assert ranks[0]["budget_backbone"] == ranks[1]["budget_backbone"]
