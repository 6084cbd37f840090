"""Two-process distributed pretraining on the CPU (accelerate launch, DDP over gloo).

Why ``--multi_gpu`` and not ``--cpu``: in accelerate 1.15 ``launch --cpu`` starts ONE process
unless an MPI hostfile is given; ``--multi_gpu --num_processes 2`` starts two through torchrun,
and on a machine without GPUs ``run_pretraining`` asks accelerate for its CPU backend (gloo).

Why ``python -m accelerate.commands.launch`` instead of the ``accelerate`` script in the venv's
bin folder: that script imports ``accelerate.commands.estimate`` -> timm -> torchvision before
radfm can install its torchvision shim, and fails in this environment
(``operator torchvision::nms does not exist``, see docs/install.md). The launch module itself
does not import torchvision; the processes it starts run ``-m radfm.training.cli``, which
imports radfm first.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
FAST = ["data.crop_size=[16,16,16]", "data.sources=[{kind: phantom, shape: [24, 24, 24]}]",
        "data.eval_volumes=2", "data.eval_shape=[24,24,24]", "data.pool_size=4", "batch_size=2",
        "log_every=1", "eval_every=0", "threads=1", "steps=3", "checkpoint_every=0"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_end_with_identical_weights_after_seeing_different_data(tmp_path) -> None:
    out = tmp_path / "ddp"
    port = _free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "radfm.training.cli", "-c", str(TINY), *FAST, f"output_dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["end_step"] for r in ranks] == [3, 3]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # DDP kept the replicas equal
    assert ranks[0]["first_batch_sha256"] != ranks[1]["first_batch_sha256"]  # each rank its own data
    assert (out / "encoder" / "model.safetensors").is_file()  # exported once, by the main process
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # one writer, not two
