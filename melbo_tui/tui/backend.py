"""The only door from the explorer to the engine: load a model, stream a completion, measure.

`Backend` is what the app needs; `EngineBackend` implements it on the real engine and
`ScriptedBackend` streams canned text without a model (tests, benchmarks, demos). Every
method may block for a long time and is called from worker threads, never from the UI thread.

One model serves every thread, and steering works by forward hooks, so two model calls at
once would see each other's vectors: `EngineBackend` runs one model call at a time, and long
measurements are cut into chunks so that a generation can slip in between.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from melbo_tui.errors import MelboError, ModelError
from melbo_tui.tui.settings import ExploreSettings, Target

if TYPE_CHECKING:
    import torch

    from melbo_tui.bank import VectorBank
    from melbo_tui.models import LoadedModel, ModelRequest

OnText = Callable[[str], None]
ShouldStop = Callable[[], bool]
OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class JobProgress:
    """Where a background MELBO-ortho run is: `done` of `count` vectors saved in `out`."""

    done: int
    count: int
    step: int
    steps: int
    loss: float


OnJobProgress = Callable[[JobProgress], None]


@dataclass(frozen=True)
class MelboJob:
    """A fresh MELBO run from inside the explorer: `count` vectors on one prompt, saved per batch."""

    prompt: str
    system: str | None
    raw: bool
    source_layer: int
    target_layer: int
    radius: float
    count: int = 8
    steps: int = 300
    batch_vectors: int = 4


@dataclass(frozen=True)
class GenerationRequest:
    bank: VectorBank
    target: Target
    settings: ExploreSettings


@dataclass(frozen=True)
class StreamResult:
    text: str
    num_tokens: int
    seconds: float
    stopped: bool

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0


class Backend(Protocol):
    """What the explorer asks of a model. Errors a user can cause raise `MelboError`."""

    @property
    def model_name(self) -> str:
        """Stable name of the requested model (part of the completion cache key)."""
        ...

    def load(self) -> str:
        """Load the model (blocking); returns a one-line description."""

    def check_bank(self, bank: VectorBank) -> None:
        """Raise `BankError` if the bank was made for a differently shaped model."""

    def stream(self, request: GenerationRequest, on_text: OnText, should_stop: ShouldStop) -> StreamResult:
        """Generate, calling `on_text` per decoded piece, until done or `should_stop()`."""

    def metrics(self, bank: VectorBank, should_stop: ShouldStop, on_progress: OnProgress) -> dict[str, list[float]]:
        """`kl` and `kl_rev` per row on the bank's own first prompt (row base_index = P_0)."""

    def target_metrics(self, bank: VectorBank, target: Target) -> dict[str, float]:
        """`norm` and `kl` to the base vector of a composed target."""

    def run_ortho(self, bank: VectorBank, bank_path: Path, base_row: int, count: int, out: Path,
                  on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        """MELBO-ortho from row `base_row` into `out`, checkpointed per block; returns a summary line."""

    def run_melbo(self, job: MelboJob, out: Path, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        """Train MELBO vectors into `out`, saved after each batch (so a stop leaves a valid bank)."""


def compose_target(bank: VectorBank, target: Target) -> torch.Tensor | None:
    """The steering vector `[d_model]` a target stands for (None for the unsteered baseline)."""
    if not target.rows:
        return None
    from melbo_tui.compose import ComposeMode, Composition, compose

    mode = ComposeMode(target.mode) if len(target.rows) > 1 else ComposeMode.MEAN
    return compose(bank.vectors, Composition(rows=target.rows, mode=mode, scale=target.scale))


class EngineBackend:
    """The real thing: a transformers model loaded by `melbo_tui.models.load_model`."""

    METRICS_CHUNK = 32  # rows per locked model call; a generation waits at most one chunk

    def __init__(self, request: ModelRequest | None = None) -> None:
        from melbo_tui.models import ModelRequest

        self._request = request or ModelRequest()
        self._lm: LoadedModel | None = None
        self._lock = threading.Lock()
        self._waiting = 0  # generations waiting for the model; measurements yield to them

    @property
    def model_name(self) -> str:
        # the requested spec, not the loaded name: cache keys must match before the model is loaded
        return self._request.name or "embedded"

    def load(self) -> str:
        lm = self._request.load()
        self._lm = lm
        return f"{lm.name.removeprefix('embedded:')} {lm.device} {str(lm.dtype).removeprefix('torch.')}"

    def _model(self) -> LoadedModel:
        if self._lm is None:
            raise ModelError("the model is not loaded yet")
        return self._lm

    def check_bank(self, bank: VectorBank) -> None:
        from melbo_tui.bank import check_bank_fits

        lm = self._model()
        check_bank_fits(bank, lm.hidden_size, lm.num_layers)

    def stream(self, request: GenerationRequest, on_text: OnText, should_stop: ShouldStop) -> StreamResult:
        from melbo_tui.generation import GenerationSettings, generate_stream
        from melbo_tui.prompts import encode

        lm = self._model()
        s = request.settings
        vector = compose_target(request.bank, request.target)
        gen = GenerationSettings(max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=s.seed)
        self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            self._waiting -= 1
        with _held(self._lock):
            if should_stop():
                return StreamResult("", 0, 0.0, True)
            ids = encode(lm, s.prompt, s.system, s.raw)
            result = generate_stream(lm, ids, request.bank.meta.source_layer, vector, gen, on_text, should_stop)
        return StreamResult(result.text, result.num_tokens, result.seconds, result.stopped)

    def metrics(self, bank: VectorBank, should_stop: ShouldStop, on_progress: OnProgress) -> dict[str, list[float]]:
        import torch

        compute_metrics = _compute_metrics_fn()
        lm = self._model()
        ids = self._bank_prompt_ids(bank)
        base = bank.vectors[bank.meta.base_index]
        out: dict[str, list[float]] = {"kl": [], "kl_rev": []}
        n = len(bank)
        for start in range(0, n, self.METRICS_CHUNK):
            if should_stop():
                break
            while self._waiting and not should_stop():
                time.sleep(0.02)
            rows = bank.vectors[start : start + self.METRICS_CHUNK]
            sub = _sub_bank(bank, torch.cat([base[None], rows]))
            with self._lock:
                values = compute_metrics(lm, sub, ids)
            for name, column in out.items():
                column.extend(float(v) for v in values[name][1:])
            on_progress(min(start + self.METRICS_CHUNK, n), n)
        return out

    def target_metrics(self, bank: VectorBank, target: Target) -> dict[str, float]:
        import torch

        vector = compose_target(bank, target)
        if vector is None:
            return {}
        result = {"norm": float(vector.norm())}
        try:
            compute_metrics = _compute_metrics_fn()
        except ModelError:
            return result
        base = bank.vectors[bank.meta.base_index]
        sub = _sub_bank(bank, torch.stack([base, vector]))
        with self._lock:
            values = compute_metrics(self._model(), sub, self._bank_prompt_ids(bank))
        result["kl"] = float(values["kl"][1])
        return result

    def run_ortho(self, bank: VectorBank, bank_path: Path, base_row: int, count: int, out: Path,
                  on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        from melbo_tui.jobs import OrthoSource, run_ortho
        from melbo_tui.ortho import OrthoConfig, OrthoProgress

        lm = self._model()
        meta = bank.meta
        if not meta.prompts:
            raise ModelError("the bank records no prompt to run MELBO-ortho on")
        source = OrthoSource(parent=bank, parent_path=str(bank_path), base_row=base_row, prompts=list(meta.prompts),
                             system=meta.system_prompt, raw=meta.raw_prompts)

        def progress(p: OrthoProgress) -> None:
            on_progress(JobProgress(p.vectors_done, p.count, p.step, p.steps, p.loss))
            self._yield_model(should_stop)  # between steps no hook is live: a generation may run

        with self._lock:
            result = run_ortho(lm, source, OrthoConfig(count=count), out, created_by="melbo-tui explorer",
                               on_progress=progress, should_stop=should_stop)
        return result.summary

    def run_melbo(self, job: MelboJob, out: Path, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        from melbo_tui.jobs import run_melbo
        from melbo_tui.melbo import MelboConfig, TrainProgress

        lm = self._model()
        config = MelboConfig(job.source_layer, job.target_layer, job.radius, num_vectors=job.count, steps=job.steps,
                             batch_vectors=job.batch_vectors)

        def progress(p: TrainProgress) -> None:
            on_progress(JobProgress(p.vectors_done, p.num_vectors, p.step, p.steps, p.loss))
            self._yield_model(should_stop)  # between steps no hook is live: a generation may run

        with self._lock:
            run = run_melbo(lm, config, [job.prompt], out, system=job.system, raw=job.raw, created_by="melbo-tui explorer",
                            on_progress=progress, should_stop=should_stop)
        saved = len(run.bank)
        if not run.complete:
            return f"stopped: {saved} MELBO vectors saved in {out}" if saved else "stopped before the first batch: nothing saved"
        return f"{saved} MELBO vectors in {out}"

    def _yield_model(self, should_stop: ShouldStop) -> None:
        """Called with the lock held: let waiting generations have the model, then take it back."""
        if not self._waiting:
            return
        self._lock.release()
        try:
            while self._waiting and not should_stop():
                time.sleep(0.005)
        finally:
            self._lock.acquire()

    def _bank_prompt_ids(self, bank: VectorBank) -> torch.Tensor:  # [1, T]
        from melbo_tui.prompts import encode

        meta = bank.meta
        if not meta.prompts:
            raise ModelError("the bank records no prompt to measure KL on")
        return encode(self._model(), meta.prompts[0], meta.system_prompt, meta.raw_prompts)


class _held:
    """Release an already acquired lock on exit."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _compute_metrics_fn() -> Callable[..., dict[str, torch.Tensor]]:
    """Next-token KLs of a bank's rows (the continuation-based metrics are left to `melbo-tui eval`)."""
    from melbo_tui.metrics import bank_metrics

    def compute(lm: LoadedModel, bank: VectorBank, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        meta = bank.meta
        return bank_metrics(lm, bank.vectors, ids, source_layer=meta.source_layer, target_layer=meta.target_layer,
                            base_index=meta.base_index, continuation=1)

    return compute


def _sub_bank(bank: VectorBank, vectors: torch.Tensor) -> VectorBank:  # vectors: [k, d_model], row 0 = base
    import dataclasses

    from melbo_tui.bank import VectorBank

    meta = dataclasses.replace(bank.meta, base_index=0)
    return VectorBank(vectors=vectors, meta=meta, metrics={})


class ScriptedBackend:
    """A model stand-in: streams deterministic words with small sleeps, honours `should_stop`.

    The text depends on the target and settings, so a test can tell completions apart.
    `fail_load` / `fail_stream` make it raise like a broken model would.
    """

    def __init__(
        self,
        load_seconds: float = 0.0,
        token_seconds: float = 0.005,
        tokens: int | None = None,
        fail_load: str | None = None,
        fail_stream: str | None = None,
        hidden_size: int | None = None,
    ) -> None:
        self.load_seconds = load_seconds
        self.token_seconds = token_seconds
        self.tokens = tokens
        self.fail_load = fail_load
        self.fail_stream = fail_stream
        self.hidden_size = hidden_size
        self.loaded = threading.Event()
        self.started: list[GenerationRequest] = []
        self.finished: list[tuple[GenerationRequest, StreamResult]] = []
        self.metrics_calls = 0
        self.job_block, self.job_steps, self.job_step_seconds = 4, 5, 0.01
        self.melbo_jobs: list[MelboJob] = []

    @property
    def model_name(self) -> str:
        return "scripted"

    def load(self) -> str:
        time.sleep(self.load_seconds)
        if self.fail_load:
            raise ModelError(self.fail_load)
        self.loaded.set()
        return "scripted model (no weights)"

    def check_bank(self, bank: VectorBank) -> None:
        from melbo_tui.errors import BankError

        if self.hidden_size is not None and bank.hidden_size != self.hidden_size:
            raise BankError(f"bank was made for hidden size {bank.hidden_size}, the model has {self.hidden_size}")

    def words(self, request: GenerationRequest) -> list[str]:
        s = request.settings
        n = self.tokens if self.tokens is not None else s.max_new_tokens
        tag = request.target.key().replace(":", "_")
        return [f" {tag}-w{i}" for i in range(n)] if request.target.rows else [f" plain-w{i}" for i in range(n)]

    def stream(self, request: GenerationRequest, on_text: OnText, should_stop: ShouldStop) -> StreamResult:
        self.started.append(request)
        if self.fail_stream:
            raise MelboError(self.fail_stream)
        start = time.perf_counter()
        pieces: list[str] = []
        stopped = False
        for word in self.words(request):
            if should_stop():
                stopped = True
                break
            time.sleep(self.token_seconds)
            pieces.append(word)
            on_text(word)
        result = StreamResult("".join(pieces), len(pieces), time.perf_counter() - start, stopped)
        self.finished.append((request, result))
        return result

    def metrics(self, bank: VectorBank, should_stop: ShouldStop, on_progress: OnProgress) -> dict[str, list[float]]:
        self.metrics_calls += 1
        n = len(bank)
        kl = [0.0 if i == bank.meta.base_index else 0.01 * i + 0.05 * math.sin(i) ** 2 for i in range(n)]
        on_progress(n, n)
        return {"kl": kl, "kl_rev": [v * 1.1 for v in kl]}

    def target_metrics(self, bank: VectorBank, target: Target) -> dict[str, float]:
        vector = compose_target(bank, target)
        return {} if vector is None else {"norm": float(vector.norm()), "kl": 0.123}

    def run_ortho(self, bank: VectorBank, bank_path: Path, base_row: int, count: int, out: Path,
                  on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        """Appends random orthogonal rows in blocks of `job_block`, saving after each like the real run."""
        import dataclasses

        import torch

        from melbo_tui.bank import VectorBank, save_bank

        theta0 = bank.vectors[base_row]
        meta = dataclasses.replace(bank.meta, kind="ortho", base_index=0)
        rows = theta0[None].clone()
        save_bank(VectorBank(vectors=rows, meta=meta), out)
        gen = torch.Generator().manual_seed(base_row)
        while len(rows) - 1 < count:
            for step in range(1, self.job_steps + 1):
                if should_stop():
                    return f"stopped: {len(rows) - 1} vectors saved in {out}"
                time.sleep(self.job_step_seconds)
                on_progress(JobProgress(len(rows) - 1, count, step, self.job_steps, 1.0 / step))
            k = min(self.job_block, count - (len(rows) - 1))
            block = torch.randn(k, rows.shape[1], generator=gen)
            basis, _ = torch.linalg.qr(torch.cat([rows, block]).T)  # [d, n+k] orthonormal columns
            new = basis.T[len(rows):] * float(theta0.norm())
            rows = torch.cat([rows, new])
            save_bank(VectorBank(vectors=rows, meta=meta), out)
        on_progress(JobProgress(len(rows) - 1, count, self.job_steps, self.job_steps, 0.0))
        return f"{len(rows) - 1} orthogonal vectors in {out}"

    def run_melbo(self, job: MelboJob, out: Path, on_progress: OnJobProgress, should_stop: ShouldStop) -> str:
        """Random orthogonal rows of norm `radius` in batches of `job.batch_vectors`, saved after each batch.

        Like the real run, nothing is written before the first batch is done.
        """
        import torch

        from melbo_tui.bank import BankMeta, VectorBank, save_bank

        self.melbo_jobs.append(job)
        hidden = self.hidden_size or 576
        meta = BankMeta(kind="melbo", model="scripted", hidden_size=hidden, num_layers=30,
                        source_layer=job.source_layer, target_layer=job.target_layer, prompts=[job.prompt],
                        system_prompt=job.system, radius=job.radius, base_index=0, created_by="melbo-tui explorer",
                        raw_prompts=job.raw)
        rows = torch.zeros(0, hidden)
        gen = torch.Generator().manual_seed(len(job.prompt))
        while len(rows) < job.count:
            for step in range(1, self.job_steps + 1):
                if should_stop():
                    return f"stopped: {len(rows)} MELBO vectors saved in {out}" if len(rows) else "stopped before the first batch: nothing saved"
                time.sleep(self.job_step_seconds)
                on_progress(JobProgress(len(rows), job.count, step, self.job_steps, -1.0 * step))
            k = min(job.batch_vectors, job.count - len(rows))
            block = torch.randn(k, hidden, generator=gen)
            basis, _ = torch.linalg.qr(torch.cat([rows, block]).T)  # [d, n+k] orthonormal columns
            rows = torch.cat([rows, basis.T[len(rows):] * job.radius])
            save_bank(VectorBank(vectors=rows, meta=meta), out)
            on_progress(JobProgress(len(rows), job.count, 0, self.job_steps, 0.0))
        return f"{len(rows)} MELBO vectors in {out}"
