"""Running the training scripts in train/ as subprocesses, as users do (``accelerate launch`` on CPU)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_env(**extra: str) -> dict:
    """The subprocess environment: one thread, and this checkout's package first on the path."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=path, **extra)


def launch_command(script: str | Path, processes: int = 1, mixed_precision: str = "no") -> list[str]:
    """``accelerate launch`` of ``script``: one CPU process, or ``processes`` gloo ranks (which also need
    ``ACCELERATE_USE_CPU=1`` in the environment)."""
    command = [str(ACCELERATE), "launch", "--num_machines", "1", "--mixed_precision", mixed_precision]
    command += ["--dynamo_backend", "no"]
    if processes > 1:
        command += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(free_port())]
    else:
        command += ["--num_processes", "1", "--cpu"]
    return command + [str(script)]


def ok(result) -> str:
    """The output of a finished subprocess that must have succeeded."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output
