"""A run's trained weights in ``RUN/adapter/``: PEFT adapters with the trained head, or, for a full
fine-tune, every weight in one safetensors file (names from :mod:`lorabudget.rundir.layout`)."""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from lorabudget.config import RunConfig
from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_dir
from lorabudget.methods.registry import get_method
from lorabudget.model.build import build_base, load_model_config
from lorabudget.rundir.layout import FULL_WEIGHTS, RunDir


def save_trained(model: nn.Module, path: Path) -> None:
    """Write what a run needs to be rebuilt: PEFT adapters and head, or every weight for ``full``."""
    with atomic_dir(Path(path)) as tmp:
        if hasattr(model, "peft_config"):
            with warnings.catch_warnings():
                # AdaLoRA saves each module at its allocated rank, which may be 0; PEFT takes a 0-sized
                # lora_A for an ungathered DeepSpeed shard and says so. Reloading handles rank 0.
                warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
                model.save_pretrained(str(tmp))
        else:
            from safetensors.torch import save_model

            save_model(model, str(Path(tmp) / FULL_WEIGHTS))


def load_trained_model(run_dir: Path, cfg: RunConfig) -> nn.Module:
    """Rebuild the base model and load the run's adapters and head (``run_dir/adapter``)."""
    from peft import PeftModel

    files = RunDir(run_dir)
    adapter_dir = files.adapter_dir
    model_config, _ = load_model_config(cfg)
    if get_method(cfg.adapter.method).placement == "model":  # every weight trained: no PEFT wrapper
        if not (adapter_dir / FULL_WEIGHTS).is_file():
            raise LorabudgetError(f"{run_dir} has no trained weights ({adapter_dir / FULL_WEIGHTS} is missing)")
        from safetensors.torch import load_model

        # Built with random weights (not on meta): non-persistent buffers such as position ids are
        # not in the file and must come from the constructor.
        model = build_base(cfg, model_config, pretrained=False)
        load_model(model, str(adapter_dir / FULL_WEIGHTS))
        return model
    base = build_base(cfg, model_config, pretrained=True)
    if not files.has_peft_adapter():
        raise LorabudgetError(f"{run_dir} has no trained adapter ({adapter_dir} is missing); was training finished?")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
