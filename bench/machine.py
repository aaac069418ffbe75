"""Machine description written next to every benchmark result."""

from __future__ import annotations

import datetime
import platform

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        from loca_diffusion.tuners.loca.ops import COSTS_CALIBRATED

        info["gpu"] = torch.cuda.get_device_name(device)
        # LoCA's strategy and DCT choices on this device come from estimated costs until a GPU run fits them
        info["loca_cost_model"] = "calibrated" if COSTS_CALIBRATED["cuda"] else "uncalibrated (estimates)"
    try:
        import diffusers
        import peft

        info["peft"], info["diffusers"] = peft.__version__, diffusers.__version__
    except ImportError:
        pass
    return info


def machine_line(info: dict) -> str:
    parts = [f"{k}: {v}" for k, v in info.items()]
    return "Machine: " + "; ".join(parts)
