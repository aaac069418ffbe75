"""The one set of adapter flags of the ``train/`` scripts (LoCA's defaults come from :class:`LoCAConfig`, so
the library and the scripts cannot drift apart), the optimisation flags of the task scripts, and the peft
config that the flags describe (LoCA, or the FourierFT / LoRA baselines with a matched budget)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

import torch.nn as nn

from ..tuners.loca.config import SCHEDULE_VARIANTS, LoCAConfig
from ..tuners.loca.ops import LOCATION_GRAD_MODES

ADAPTERS = ("loca", "fourierft", "lora")


UNET_ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class ScriptArgumentParser(argparse.ArgumentParser):
    """The train/ scripts' parser: a wrong flag or value is one ``prog: error: ...`` line (exit status 2).

    argparse prints the whole usage before the error, which for a script with 70 flags is 60 lines that bury
    the one that matters (and ``accelerate launch`` repeats the child's stderr when it fails); ``--help``
    still prints it all."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _targeted_linears(model: nn.Module, target_modules: list[str]) -> list[nn.Linear]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules):
            found.append(module)
    if not found:
        raise ValueError(f"No nn.Linear module of the model matches target_modules={target_modules}")
    return found


def build_adapter_config(
    adapter: str,
    model: nn.Module,
    target_modules: list[str],
    n_frequency: int = 1000,
    scaling: float = 1.0,
    lora_rank: Optional[int] = None,
    lora_alpha: Optional[float] = None,
    fourierft_scaling: float = 64.0,
    match_budget: bool = False,
    budget_lora_rank: Optional[int] = None,
    **loca_kwargs,
):
    """The peft config of ``adapter`` (``loca``, ``fourierft`` or ``lora``) on ``target_modules``.

    ``match_budget=True`` gives the baselines LoCA's trainable-parameter count (``n_frequency`` per
    layer; locations are not counted once frozen, as in the paper): FourierFT gets the same
    ``n_frequency``; LoRA the rank whose ``r * (d_in + d_out)`` summed over the layers is closest.
    ``budget_lora_rank=R`` sets the budget to a rank-``R`` LoRA's on these layers (the paper's Fig. 4):
    LoRA gets rank ``R``, LoCA and FourierFT :func:`lora_equivalent_n_frequency` coefficients per layer
    (``n_frequency`` is then ignored).
    """
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
    from peft import FourierFTConfig, LoraConfig

    if budget_lora_rank is not None:
        if budget_lora_rank < 1:
            raise ValueError(f"budget_lora_rank must be >= 1, got {budget_lora_rank}")
        n_frequency = lora_equivalent_n_frequency(model, target_modules, budget_lora_rank)
        lora_rank, match_budget = budget_lora_rank, False

    if adapter == "loca":
        return LoCAConfig(target_modules=target_modules, n_frequency=n_frequency, scaling=scaling, **loca_kwargs)
    if adapter == "fourierft":
        return FourierFTConfig(target_modules=target_modules, n_frequency=n_frequency, scaling=fourierft_scaling)
    if match_budget:
        layers = _targeted_linears(model, target_modules)
        budget = n_frequency * len(layers)
        per_rank = sum(layer.in_features + layer.out_features for layer in layers)
        lora_rank = max(1, round(budget / per_rank))
    rank = 4 if lora_rank is None else int(lora_rank)
    if rank < 1:
        raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=lora_alpha if lora_alpha is not None else rank,
        target_modules=target_modules,
        init_lora_weights="gaussian",
    )


def lora_equivalent_n_frequency(model: nn.Module, target_modules: list[str], rank: int) -> int:
    """Coefficients per layer whose total over the targeted layers is closest to a rank-``rank`` LoRA's
    ``rank * (d_in + d_out)`` summed over the same layers."""
    layers = _targeted_linears(model, target_modules)
    return max(1, round(rank * sum(layer.in_features + layer.out_features for layer in layers) / len(layers)))


def trainable_parameter_count(model: nn.Module, count_loca_locations: bool = False) -> int:
    """Trainable parameters; LoCA locations are left out (they are frozen integers after T_s)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and (count_loca_locations or "loca_locations" not in name)
    )


TASK_ADAPTERS = ADAPTERS + ("none",)


#: LoCA flags' defaults: LoCAConfig's field defaults (one source for the library and every script).
LOCA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LoCAConfig) if f.default is not dataclasses.MISSING}


def add_adapter_arguments(
    parser: argparse.ArgumentParser,
    target_modules: str,
    *,
    adapters: tuple[str, ...] = TASK_ADAPTERS,
    n_frequency: int = LOCA_DEFAULTS["n_frequency"],
    location_training_steps: Optional[int] = LOCA_DEFAULTS["location_training_steps"],
    lora_rank: int = 8,
) -> None:
    """Add the one set of adapter flags: ``--adapter`` and its options, LoCA's schedule (paper Sec. 4.4 and the
    Table 5 variants) included. LoCA's defaults are :class:`LoCAConfig`'s.

    Args:
        parser: The script's parser (the flags go into an ``adapter`` group).
        target_modules: Default of ``--target_modules`` (comma-separated module-name suffixes).
        adapters: The ``--adapter`` choices (``none``, the frozen model with its head trained, only where a
            script has a head).
        n_frequency: Default of ``--n_frequency`` where a script's model wants another than LoCAConfig's.
        location_training_steps: Default T_s (None: 10% of the run, as LoCAConfig).
        lora_rank: Default LoRA rank of the baseline.
    """
    g = parser.add_argument_group("adapter")
    g.add_argument(
        "--adapter",
        choices=adapters,
        default="loca",
        help="Adapter to train: LoCA or a baseline"
        + ("; none: frozen model, only the head trains." if "none" in adapters else "."),
    )
    g.add_argument("--target_modules", default=target_modules, help="Comma-separated module names to adapt.")
    g.add_argument("--n_frequency", type=int, default=n_frequency, help="LoCA / FourierFT coefficients per layer.")
    g.add_argument("--scaling", type=float, default=LOCA_DEFAULTS["scaling"], help="LoCA alpha.")
    g.add_argument(
        "--location_lr", type=float, default=LOCA_DEFAULTS["location_lr"], help="LoCA: learning rate of the locations."
    )
    g.add_argument(
        "--coefficient_steps",
        type=int,
        default=LOCA_DEFAULTS["coefficient_steps"],
        help="LoCA: coefficient steps per alternation (B_a).",
    )
    g.add_argument(
        "--location_steps",
        type=int,
        default=LOCA_DEFAULTS["location_steps"],
        help="LoCA: location steps per alternation (B_l).",
    )
    g.add_argument(
        "--location_training_steps",
        type=int,
        default=location_training_steps,
        help="LoCA: steps after which locations freeze (T_s; none given: 10%% of the steps).",
    )
    g.add_argument(
        "--location_grad",
        choices=LOCATION_GRAD_MODES,
        default=LOCA_DEFAULTS["location_grad"],
        help="LoCA: finite-difference location gradient.",
    )
    g.add_argument(
        "--schedule_variant",
        choices=SCHEDULE_VARIANTS,
        default=LOCA_DEFAULTS["schedule_variant"],
        help="LoCA: alternating (paper), fixed (V1), alternate_throughout (V2), joint (V3).",
    )
    g.add_argument(
        "--random_loc_seed",
        type=int,
        default=LOCA_DEFAULTS["random_loc_seed"],
        help="LoCA: seed of the initial locations.",
    )
    g.add_argument("--fourierft_scaling", type=float, default=64.0, help="FourierFT scaling.")
    g.add_argument("--lora_rank", type=int, default=lora_rank, help="LoRA rank (>= 1).")
    g.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (default: the rank).")
    g.add_argument("--match_budget", action="store_true", help="Give the baseline LoCA's trainable-parameter count.")
    g.add_argument(
        "--budget_lora_rank",
        type=int,
        default=None,
        help="Budget of a rank-R LoRA on the targeted layers: LoRA rank R, LoCA / FourierFT the coefficients per "
        "layer with the same total (overrides --n_frequency and --lora_rank).",
    )


def adapter_config_from_args(args, model: nn.Module):
    """The peft config that :func:`add_adapter_arguments`' flags describe (:func:`build_adapter_config`)."""
    loca_options = dict(
        location_grad=args.location_grad,
        random_loc_seed=args.random_loc_seed,
        location_lr=args.location_lr,
        coefficient_steps=args.coefficient_steps,
        location_steps=args.location_steps,
        location_training_steps=args.location_training_steps,
        schedule_variant=args.schedule_variant,
    )
    return build_adapter_config(
        args.adapter,
        model,
        target_list(args.target_modules),
        n_frequency=args.n_frequency,
        scaling=args.scaling,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        fourierft_scaling=args.fourierft_scaling,
        match_budget=args.match_budget,
        budget_lora_rank=getattr(args, "budget_lora_rank", None),
        **(loca_options if args.adapter == "loca" else {}),
    )


def add_training_arguments(parser: argparse.ArgumentParser, project: str, **defaults) -> None:
    """Optimisation, checkpoint and logging options (``defaults`` overrides any of their defaults)."""
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", default=project)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--per_device_train_batch_size", type=int, default=16)
    g.add_argument("--per_device_eval_batch_size", type=int, default=32)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--num_train_epochs", type=int, default=3)
    g.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    g.add_argument("--learning_rate", type=float, default=5e-3, help="Adapter coefficients (and the head).")
    g.add_argument(
        "--head_learning_rate", type=float, default=None, help="The trained head (default: --learning_rate)."
    )
    g.add_argument("--weight_decay", type=float, default=0.0)
    g.add_argument("--lr_scheduler_type", default="linear")
    g.add_argument("--num_warmup_steps", type=int, default=0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    g.add_argument("--checkpointing_steps", type=int, default=None, help="Save the training state every N steps.")
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", default=None, help='A checkpoint directory or "latest".')
    g.add_argument("--report_to", default="tensorboard", help='tensorboard, wandb, all or "none".')
    g.add_argument("--logging_dir", default="logs")
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--project_name", default=project, help="Tracker project name.")
    parser.set_defaults(**defaults)


def target_list(spec: str) -> list[str]:
    return [t.strip() for t in spec.split(",") if t.strip()]
