"""What the benchmark scripts share: the machine they ran on, the process's peak memory, child processes,
the operator versions to time and the JSON output."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys


def machine() -> dict:
    """The CPU, thread count, torch version and GPU of this process (call after setting the threads)."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def machine_line(m: dict, *, gpu: bool) -> str:
    """One line naming the machine of ``machine()``'s dict ``m``; ``gpu``: whether to name its GPU."""
    return (f"machine: {m['cpu']} ({m['cpu_count']} cores, {m['threads']} torch threads), torch {m['torch']}"
            + (f", GPU {m['gpu']}" if gpu and m["gpu"] else ""))


def rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_child(cmd: list[str]) -> dict:
    """Run one measurement in a fresh Python process; its last stdout line is a JSON object. A failed
    child's stderr is shown and ends the benchmark with its exit code."""
    import json
    import subprocess
    import sys

    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode:
        print(done.stderr, file=sys.stderr)
        raise SystemExit(done.returncode)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_results(path: str | None, args, results: list[dict], **extra) -> None:
    """The results, the arguments, the machine and ``extra`` entries as JSON at ``path`` (nothing when None)."""
    import json
    from pathlib import Path

    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"args": vars(args), "machine": results[0].get("machine") if results else None,
                                          "results": results, **extra}, indent=1))


def operator_paths(path: str) -> contextlib.AbstractContextManager:
    """The context to measure in: ``reference`` runs every optimised operator in its reference version
    (``ssa_rvos.modeling.ops.reference_paths``), ``fast`` as shipped. An older ssa_rvos without that switch
    (on PYTHONPATH, for a before/after comparison) has one version only: ``fast`` times it as it is."""
    try:
        from ssa_rvos.modeling.ops import reference_paths
    except ImportError:
        if path == "reference":
            sys.exit("this ssa_rvos has no reference_paths(): time it with --paths fast")
        return contextlib.nullcontext()
    return reference_paths(path == "reference")
