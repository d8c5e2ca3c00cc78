"""Loading configs, weights and tokenizers: a local folder, the Hugging Face cache, or the hub.

Offline-first: a hub name is tried from the local cache before the network, and the hub is asked
only when a quick socket check says it answers. Every loading failure becomes one
:class:`LorabudgetError` line saying how to work offline.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Callable
from urllib.parse import urlparse

from lorabudget.config import RunConfig
from lorabudget.errors import LorabudgetError, first_line
from lorabudget.model.architectures import BUILTIN_CONFIGS
from lorabudget.model.packaged import packaged_model, packaged_model_folder


def resolve_model_source(name: str) -> str:
    """Map a model name to what ``from_pretrained`` should load: a local folder or a hub name."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    packaged = packaged_model(name)
    if packaged:
        return packaged_model_folder(name) or packaged.hub_name
    return name


def _offline_hint(name: str, what: str, err: Exception) -> LorabudgetError:
    packaged = packaged_model(name)
    extra = f"; or {packaged.install_hint}: its packages ship this model" if packaged else ""
    return LorabudgetError(
        f"cannot load the {what} of model '{name}': it is not a local folder and the Hugging Face hub "
        f"could not provide it ({first_line(err)}). When offline, download the model elsewhere and pass its "
        f"folder: --set model.name=/path/to/model{extra}"
    )


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' 'newly initialized weights' notices; lorabudget reports the head itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a quick TCP check, so offline use fails fast
    instead of waiting through huggingface_hub's retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def from_pretrained(loader: Callable[..., Any], name: str, what: str, **kwargs: Any) -> Any:
    """Call ``loader.from_pretrained`` on the resolved model source, offline-first.

    A local folder loads directly; a hub name is tried from the local Hugging Face cache first and
    fetched only when the hub is reachable. Failures become one clear :class:`LorabudgetError`.
    """
    source = resolve_model_source(name)
    with quiet_transformers():
        try:
            if os.path.isdir(source):
                return loader.from_pretrained(source, **kwargs)
            try:
                return loader.from_pretrained(source, local_files_only=True, **kwargs)
            except (OSError, ValueError):
                if not hub_reachable():
                    raise
                return loader.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as err:
            raise _offline_hint(name, what, err) from err


def load_model_config(cfg: RunConfig, allow_builtin: bool = False) -> tuple[Any, str]:
    """Return ``(transformers config, where it came from)`` for the configured model.

    With ``allow_builtin`` (planning only), a well-known architecture that is neither a local folder
    nor in the Hugging Face cache uses its built-in published config instead of the network.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    name = cfg.model.name
    label_kwargs = dict(
        num_labels=cfg.num_labels,
        id2label=dict(enumerate(cfg.class_names)),
        label2id={label: i for i, label in enumerate(cfg.class_names)},
    )
    source = resolve_model_source(name)
    if allow_builtin and name in BUILTIN_CONFIGS and not os.path.isdir(source):
        try:
            with quiet_transformers():
                return AutoConfig.from_pretrained(source, local_files_only=True, **label_kwargs), source
        except (OSError, ValueError):
            values = dict(BUILTIN_CONFIGS[name])
            config_cls = CONFIG_MAPPING[values.pop("model_type")]
            return config_cls(**values, **label_kwargs), f"built-in published config of {name}"
    return from_pretrained(AutoConfig, name, "config", **label_kwargs), source


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, name_or_path, "tokenizer")
