"""What a run records about where it ran: versions, git commit, device, command line."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

PACKAGES = ["unlearn-arena", "torch", "diffusers", "transformers", "safetensors", "nudenet", "onnxruntime",
            "numpy", "pandas", "pyarrow", "open_clip_torch", "accelerate", "datasets"]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                            "processor": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def collect(device: torch.device, model_provenance: dict[str, Any]) -> dict[str, Any]:
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_commit(),
        "device": device_info(device),
        "model": model_provenance,
    }


def named_files(plan: Any) -> list[dict[str, Any]]:
    """Each file or folder the run names (the components' file options, ``--prompts``, ``--benign-prompts``):
    its role (``defense:saferedir.checkpoint``, ``--prompts``), path and sha256. Cell keys hold only the hashes;
    this is where a run says which path each came from."""
    from benchmark.api.files import full_sha256
    from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES

    config = plan.config
    components: list[Any] = [DEFENSES.get(d)(**config.defense_options.get(d, {})) for d in config.defenses]
    components += [ATTACKS.get(a)(**config.attack_options.get(a, {})) for a in config.attacks]
    for task in plan.tasks:
        for role, spec in (("concept", task.judge), ("utility", task.utility_judge)):
            judge_cls = JUDGES.get(spec.name)
            judge = judge_cls.__new__(judge_cls)  # options only: no model is loaded
            judge.options = judge_cls.validate_options(plan.judge_options[task.name][role])
            components.append(judge)
    files: dict[tuple[str, str], dict[str, Any]] = {}
    for component in components:
        component.data_dir = config.data_dir
        for entry in component.named_files():
            files.setdefault((entry["role"], entry["path"]), entry)
    for flag, value in (("--prompts", config.prompts), ("--benign-prompts", config.benign_prompts)):
        if value and Path(value).is_file():
            files.setdefault((flag, value), {"role": flag, "path": str(value), "sha256": full_sha256(value)})
    return list(files.values())
