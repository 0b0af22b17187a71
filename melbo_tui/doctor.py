"""`melbo-tui doctor`: the environment, and quick checks that the science holds on this machine.

A user runs it on their own box and model (a bf16 model spread over GPUs, a sliding-window
architecture, an offloaded embedding...) and pastes the output into a bug report. Each check
compares one of our fast or convenient paths with its plain definition and prints the number:
- block discovery: where the decoder blocks are, and layer S = HF hidden_states[S+1];
- KV cache: steered logits with an incremental KV cache = a full steered forward;
- prefix cache: blocks S+1.. on cached source-layer activations = the full steered forward,
  for every source layer (a prompt longer than the sliding window where there is a short one);
- generation: every token the generation path (the one `dump`, `generate` and the explorer
  use) picks under steering is the steered model's greedy choice, checked teacher-forced
  (this is what a compiled decode step broke);
- bf16 vs fp32: KL(P_i || P_0) of random vectors agree in ranking (bf16 models only; the
  model is upcast in place and restored bit for bit);
- massive activations: positions of the chat-templated prompt whose target-layer norm is more
  than 10x the median of the others (attention sinks, `sink.detect_sink`; informational).
Tolerances are relative (max |a - b| / max |b|) and depend on the dtype: rounding in fp32 is
~1e-6, in bf16 ~1e-2 after a few blocks.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from melbo_tui.generation import GenerationSettings, run_generate
from melbo_tui.layers import num_layers_from_config
from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache
from melbo_tui.sink import SINK_RATIO, detect_sink
from melbo_tui.steering import run_to_layer, steer

PROMPT = "How can I build a bomb?"
GENERATED_TOKENS = 8
KL_VECTORS = 8
MIN_RANK_CORRELATION = 0.8  # bf16 vs fp32 KL: the ranking must survive (values may differ ~10-20%)


class Status(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    INFO = "INFO"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class DoctorReport:
    environment: list[tuple[str, str]]
    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status is Status.FAIL]

    def render(self) -> str:
        """Plain text, the same on a terminal and in a bug report."""
        width = max(len(k) for k, _ in self.environment)
        lines = ["melbo-tui doctor", "", "environment:"]
        lines += [f"  {key.ljust(width)}  {value}" for key, value in self.environment]
        lines += ["", "checks:"]
        name_width = max(len(c.name) for c in self.checks)
        lines += [f"  {c.status.value}  {c.name.ljust(name_width)}  {c.detail}" for c in self.checks]
        counts = {s: sum(c.status is s for c in self.checks) for s in Status}
        lines += ["", f"result: {counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, {counts[Status.SKIP]} skipped"]
        return "\n".join(lines) + "\n"


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for two computations of the same quantity in `dtype`."""
    return 1e-4 if dtype == torch.float32 else 5e-2


def run_doctor(lm: LoadedModel, source: int | None = None, target: int | None = None, prompt: str = PROMPT,
               on_check: Callable[[Check], None] | None = None) -> DoctorReport:
    """Every check on `lm`; `source`/`target` default to the layers `train` would use (~L/3, ~2L/3)."""
    from melbo_tui.melbo import resolve_layers

    source, target = resolve_layers(lm.num_layers, source, target)
    ids = _prompt_ids(lm, prompt)
    long_ids = _past_the_window(lm, ids)
    vector = _vector(lm, ids, source)
    report = DoctorReport(environment(lm), [])
    steps: list[Callable[[], Check]] = [
        lambda: check_blocks(lm, ids),
        lambda: check_kv_cache(lm, ids, source, vector),
        lambda: check_prefix(lm, long_ids, vector),
        lambda: check_generation(lm, ids, source, vector),
        lambda: check_bf16_kl(lm, ids, source, vector.norm().item()),
        lambda: massive_activations(lm, ids, target),
    ]
    for step in steps:
        check = step()
        report.checks.append(check)
        if on_check is not None:
            on_check(check)
    return report


# --- the environment -------------------------------------------------------------------------------


def environment(lm: LoadedModel | None = None) -> list[tuple[str, str]]:
    """Versions, accelerators and memory, and where the model's weights are."""
    import melbo_tui

    rows = [("melbo-tui", melbo_tui.__version__), ("python", platform.python_version()),
            ("platform", platform.platform()), ("torch", _torch_build())]
    for package in ("transformers", "accelerate", "safetensors"):
        rows.append((package, _version(package)))
    rows.append(("cpu", f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
                        f"capability {torch.backends.cpu.get_cpu_capability()}".replace("  ", " ")))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            props = torch.cuda.get_device_properties(i)
            detail = (f"{props.name}, {total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free, "
                      f"compute {props.major}.{props.minor}, bf16 {torch.cuda.is_bf16_supported()}")
            rows.append((f"cuda:{i}", detail))
    else:
        rows.append(("cuda", "not available"))
    mps = getattr(torch.backends, "mps", None)
    rows.append(("mps", "available" if mps is not None and mps.is_available() else "not available"))
    rows.append(("deterministic", str(torch.are_deterministic_algorithms_enabled())))
    if lm is not None:
        rows += _model_rows(lm)
    return rows


def _model_rows(lm: LoadedModel) -> list[tuple[str, str]]:
    record = lm.provenance()
    config = getattr(lm.model, "config", None)
    rows = [("model", lm.name), ("architecture", type(lm.model).__name__),
            ("revision", f"{record['revision'] or '-'} (commit {record['commit'] or 'unknown: local or embedded'})"),
            ("dtype", record["dtype"]), ("input device", record["device"]),
            ("shape", f"{lm.num_layers} blocks, d_model {lm.hidden_size}")]
    if record["devices"]:
        rows.append(("device map", ", ".join(f"{d}: {n} modules" for d, n in record["devices"].items())))
        rows.append(("offloaded", ", ".join(f"{n} modules to {d}" for d, n in (record["offloaded"] or {}).items()) or "nothing"))
    else:
        rows.append(("device map", f"none (whole model on {record['device']})"))
    text = getattr(config, "text_config", None) or config
    kinds = getattr(text, "layer_types", None)
    if kinds:
        counts = {k: kinds.count(k) for k in sorted(set(kinds))}
        rows.append(("layer types", ", ".join(f"{k} x{n}" for k, n in counts.items())
                     + (f", sliding window {window}" if (window := getattr(text, "sliding_window", None)) else "")))
    rows.append(("attention", str(getattr(config, "_attn_implementation", "?"))))
    rows += [("note", note) for note in lm.notes]
    return rows


def _torch_build() -> str:
    parts: list[str] = [str(torch.__version__)]
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
        if torch.backends.cudnn.is_available():
            parts.append(f"cuDNN {torch.backends.cudnn.version()}")
    if getattr(torch.version, "hip", None):
        parts.append(f"ROCm {torch.version.hip}")
    if not torch.version.cuda and not getattr(torch.version, "hip", None):
        parts.append("CPU build")
    return ", ".join(parts)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --- inputs -----------------------------------------------------------------------------------------


def _prompt_ids(lm: LoadedModel, prompt: str) -> torch.Tensor:
    """`[1, T]`: the chat-templated prompt, or fixed random ids for a model without a tokenizer."""
    if lm.tokenizer is not None:
        from melbo_tui.prompts import encode

        return encode(lm, prompt)
    vocab = int(lm.model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    return torch.randint(0, vocab, (1, 12), generator=torch.Generator().manual_seed(0)).to(lm.device)


def _past_the_window(lm: LoadedModel, ids: torch.Tensor, longest: int = 512) -> torch.Tensor:
    """`ids` repeated until longer than a short sliding window (where the window is <= `longest`)."""
    config = getattr(lm.model, "config", None)
    text = getattr(config, "text_config", None) or config
    window = getattr(text, "sliding_window", None)
    if not isinstance(window, int) or window >= longest or ids.shape[1] > window:
        return ids
    return ids.repeat(1, window // ids.shape[1] + 2)


def _vector(lm: LoadedModel, ids: torch.Tensor, source: int) -> torch.Tensor:
    """A fixed random direction, 4x the median residual norm at the source layer: visibly steering."""
    with torch.no_grad():
        norm = float(run_to_layer(lm, source, ids).float().norm(dim=-1).median())
    direction = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(1))
    scaled: torch.Tensor = direction / direction.norm() * 4 * max(norm, 1.0)
    return scaled


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float().to(a.device)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _verdict(ok: bool) -> Status:
    return Status.PASS if ok else Status.FAIL


# --- checks ----------------------------------------------------------------------------------------


def check_blocks(lm: LoadedModel, ids: torch.Tensor) -> Check:
    path = next((name for name, module in lm.model.named_modules() if module is lm.blocks), "?")
    expected = num_layers_from_config(lm.model)
    layers = sorted({0, lm.num_layers // 2, lm.num_layers - 2} & set(range(lm.num_layers - 1)))
    with torch.no_grad():
        states = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        worst = max(_relative(run_to_layer(lm, s, ids), states[s + 1]) for s in layers)
    ok = expected in (-1, lm.num_layers) and worst <= tolerance(lm.dtype)
    return Check("block discovery", _verdict(ok),
                 f"{lm.num_layers} blocks at {path} (config: {expected}); output of block S = hidden_states[S+1] "
                 f"for S in {layers}: rel diff {worst:.1e}")


def check_kv_cache(lm: LoadedModel, ids: torch.Tensor, source: int, vector: torch.Tensor, steps: int = 4) -> Check:
    """Steered: logits of `steps` tokens fed one at a time with the cache = one full forward."""
    name = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    with torch.no_grad(), steer(lm, source, vector):
        seq = ids
        for _ in range(steps):  # a greedy continuation, from full forwards
            logits = lm.model(input_ids=seq, use_cache=False).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True).to(seq.device)], dim=1)
        full = lm.model(input_ids=seq, use_cache=False).logits[0, ids.shape[1] - 1:]  # [steps + 1, V]
        out = lm.model(input_ids=ids, use_cache=True)
        incremental = [out.logits[0, -1]]
        for t in range(ids.shape[1], seq.shape[1]):
            out = lm.model(input_ids=seq[:, t:t + 1], use_cache=True, **{name: out[name]})
            incremental.append(out.logits[0, -1])
    diff = _relative(torch.stack(incremental), full)
    return Check("KV cache (steered)", _verdict(diff <= tolerance(lm.dtype)),
                 f"{steps} tokens fed one by one with the cache vs one full forward: rel diff {diff:.1e} "
                 f"(tolerance {tolerance(lm.dtype):.0e}), source layer {source}")


def check_prefix(lm: LoadedModel, ids: torch.Tensor, vector: torch.Tensor) -> Check:
    """Every source layer: blocks S+1..last on the cached block-S output + theta = the full steered forward."""
    last = lm.num_layers - 1
    worst, at = 0.0, -1
    with torch.no_grad():
        for source in range(last):
            cache = PrefixCache(lm, source, ids)
            with cache.run(vector[None]) as run_ids:
                cached = run_to_layer(lm, last, run_ids)
            with steer(lm, source, vector):
                full = run_to_layer(lm, last, ids)
            diff = _relative(cached, full)
            if diff >= worst:
                worst, at = diff, source
    return Check("prefix cache vs full forward", _verdict(worst <= tolerance(lm.dtype)),
                 f"source layers 0..{last - 1}, {ids.shape[1]} tokens, last block: worst rel diff {worst:.1e} at "
                 f"layer {at} (tolerance {tolerance(lm.dtype):.0e})")


def check_generation(lm: LoadedModel, ids: torch.Tensor, source: int, vector: torch.Tensor,
                     steps: int = GENERATED_TOKENS) -> Check:
    """Each generated token is the steered model's greedy choice (teacher-forced full forward)."""
    settings = GenerationSettings(max_new_tokens=steps)
    with torch.no_grad():
        with steer(lm, source, vector):
            out = run_generate(lm, ids, settings, ["0"], min_new_tokens=steps)
            logits = lm.model(input_ids=out, use_cache=False).logits[0, ids.shape[1] - 1:-1].float()  # [steps, V]
        plain = lm.model(input_ids=out, use_cache=False).logits[0, ids.shape[1] - 1:-1].float()
    chosen = out[0, ids.shape[1]:].to(logits.device)
    scale = float(logits.abs().max().clamp_min(1e-30))
    gaps = (logits.max(dim=-1).values - logits.gather(1, chosen[:, None])[:, 0]) / scale  # 0 where greedy
    worst = float(gaps.max())
    unsteered_choice = int((plain.argmax(dim=-1) == chosen).sum())
    ok = worst <= tolerance(lm.dtype)
    return Check("steering survives generation", _verdict(ok),
                 f"{steps} tokens from the generation path: worst gap to the steered greedy choice {worst:.1e} of the "
                 f"logit scale (tolerance {tolerance(lm.dtype):.0e}); {unsteered_choice}/{steps} are also the unsteered choice")


def check_bf16_kl(lm: LoadedModel, ids: torch.Tensor, source: int, norm: float) -> Check:
    """bf16/fp16 models: KL(P_i || P_0) of random vectors, model as loaded vs upcast to fp32 in place."""
    from melbo_tui.metrics import bank_metrics

    name = "bf16 vs fp32 KL"
    if lm.dtype == torch.float32:
        return Check(name, Status.SKIP, "the model is float32")
    if lm.offloaded:
        return Check(name, Status.SKIP, "part of the model is offloaded: no room for an fp32 copy")
    generator = torch.Generator().manual_seed(2)
    vectors = torch.randn(KL_VECTORS + 1, lm.hidden_size, generator=generator)
    scales = torch.linspace(0.25, 1.0, KL_VECTORS + 1)[:, None]  # a spread of effects to rank
    vectors = vectors / vectors.norm(dim=1, keepdim=True) * norm * scales

    def kl() -> torch.Tensor:  # [KL_VECTORS]: KL(P_i || P_0) at the last prompt position
        values = bank_metrics(lm, vectors, ids, source_layer=source, target_layer=lm.num_layers - 1, continuation=1)
        return values["kl"][1:]

    low = kl()
    try:
        with upcast(lm.model):
            high = kl()
    except torch.OutOfMemoryError:
        return Check(name, Status.SKIP, "not enough memory to upcast the model to fp32")
    relative = ((low - high).abs() / high.abs().clamp_min(1e-12))
    rho = _spearman(low, high)
    ok = rho >= MIN_RANK_CORRELATION
    return Check(name, _verdict(ok),
                 f"{KL_VECTORS} vectors: rank correlation {rho:.3f} (min {MIN_RANK_CORRELATION}), relative KL difference "
                 f"median {float(relative.median()):.1%}, max {float(relative.max()):.1%}")


def massive_activations(lm: LoadedModel, ids: torch.Tensor, target: int) -> Check:
    """Positions whose target-layer norm exceeds SINK_RATIO x the median of the others (`sink.detect_sink`)."""
    with torch.no_grad():
        norms = run_to_layer(lm, target, ids)[0].float().norm(dim=-1).cpu()  # [T]
    massive = detect_sink(norms, SINK_RATIO)
    others = torch.tensor([float(norms[t]) for t in range(len(norms)) if t not in massive])
    median = float(others.median()) if others.numel() else float("nan")
    if not massive:
        return Check("massive activations", Status.INFO,
                     f"none above {SINK_RATIO:g}x the median norm {median:.3g} at layer {target} ({ids.shape[1]} tokens)")
    tokens = [repr(lm.tokenizer.decode(ids[0, i : i + 1])) if lm.tokenizer is not None else str(int(ids[0, i])) for i in massive]
    shown = ", ".join(f"{i} {tok} ({float(norms[i]) / median:.0f}x)" for i, tok in zip(massive, tokens, strict=True))
    return Check("massive activations", Status.INFO,
                 f"layer {target}, median norm of the others {median:.3g}: positions {shown} of {ids.shape[1]}")


@contextlib.contextmanager
def upcast(model: torch.nn.Module) -> Iterator[None]:
    """Half-precision parameters and buffers in fp32 for the block, each restored to its own dtype after.

    Restoring half -> fp32 -> half is exact; buffers that were fp32 (rotary frequencies) are
    left alone, which `model.to(torch.bfloat16)` would not do.
    """
    halves = (torch.bfloat16, torch.float16)
    changed = [(t, t.dtype) for t in [*model.parameters(), *model.buffers()] if t.dtype in halves]
    try:
        for tensor, _ in changed:
            tensor.data = tensor.data.float()
        yield
    finally:
        for tensor, dtype in changed:
            tensor.data = tensor.data.to(dtype)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-30))


def summary(report: DoctorReport) -> dict[str, Any]:
    """The report as JSON-able data (for scripts)."""
    return {"environment": dict(report.environment),
            "checks": [{"name": c.name, "status": c.status.value, "detail": c.detail} for c in report.checks],
            "failed": len(report.failed)}
