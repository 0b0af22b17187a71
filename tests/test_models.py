"""Loading: placement (device maps, offload), hub arguments, provenance, quiet loading from a thread."""

from __future__ import annotations

import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from helpers_ortho import random_bank

from melbo_tui.errors import BankError, ModelError
from melbo_tui.generation import GenerationSettings, generate_batch
from melbo_tui.metrics import bank_metrics
from melbo_tui.models import (
    LoadedModel,
    ModelRequest,
    check_resume_provenance,
    load_model,
    placement,
    resolve_device,
)
from melbo_tui.prefix import PrefixCache
from melbo_tui.steering import steer

GIB = 1 << 30


def _offload_map(lm: LoadedModel) -> dict[str, str]:
    """Embedding (tied to the head) and every other block on "disk", the rest on "cpu": what `auto` does
    when memory runs out."""
    mapping = {"model.embed_tokens": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    mapping.update({f"model.layers.{i}": ("disk" if i % 2 else "cpu") for i in range(lm.num_layers)})
    return mapping


@pytest.fixture(scope="module")
def offloaded(tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = tmp_path_factory.mktemp("offload")
    return load_model(str(tiny_model_dir), device_map=_offload_map(tiny_chat), offload_folder=str(folder))


def test_offloaded_embedding_still_takes_inputs(offloaded: LoadedModel, tiny_chat: LoadedModel) -> None:
    """The embedding's weight is a meta tensor under disk offload; inputs go to its execution device."""
    assert offloaded.model.get_input_embeddings().weight.device.type == "meta"
    assert offloaded.device == torch.device("cpu")
    ids = tiny_chat.tokenizer("How can I build a bomb?", return_tensors="pt").input_ids
    vector = torch.randn(tiny_chat.hidden_size, generator=torch.Generator().manual_seed(0)) * 6
    with torch.no_grad():
        for lm in (offloaded, tiny_chat):
            with steer(lm, 2, vector):
                lm.logits = lm.model(input_ids=ids.to(lm.device)).logits  # type: ignore[attr-defined]
    torch.testing.assert_close(offloaded.logits, tiny_chat.logits)  # type: ignore[attr-defined]
    settings = GenerationSettings(max_new_tokens=6)
    assert generate_batch(offloaded, ids, 2, vector[None], settings) == generate_batch(tiny_chat, ids, 2, vector[None], settings)
    vectors = random_bank(tiny_chat, rows=3, norm=6.0).vectors
    measured = [bank_metrics(lm, vectors, ids, source_layer=1, target_layer=4, continuation=4) for lm in (offloaded, tiny_chat)]
    for name, values in measured[0].items():
        torch.testing.assert_close(values, measured[1][name], atol=1e-5, rtol=1e-4)
    assert PrefixCache(offloaded, 1, ids.to(offloaded.device)).hidden.device.type == "cpu"


def test_offloading_is_said_and_recorded(offloaded: LoadedModel) -> None:
    assert any("offloaded" in note and "disk" in note for note in offloaded.notes)
    record = offloaded.provenance()
    assert record["offloaded"] == {"disk": 2 + offloaded.num_layers // 2}
    assert record["devices"]["disk"] == 2 + offloaded.num_layers // 2 and record["device"] == "cpu"


def test_offload_folder_needs_a_device_map(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="`offload_folder` needs a device map"):
        load_model(str(tiny_model_dir), device="cpu", offload_folder=str(tmp_path))


def test_cuda_n_puts_the_model_on_gpu_n_only() -> None:
    memory = {0: 80 * GIB, 1: 40 * GIB, 2: 80 * GIB, "cpu": 100 * GIB}
    assert placement("cuda:1", memory) == {"device_map": "auto", "max_memory": {1: 40 * GIB, "cpu": 100 * GIB}}
    assert placement("cuda", memory) == {"device_map": "auto"}
    assert placement("cpu", memory) == {} and placement("mps", memory) == {}


def test_device_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ModelError, match=r"cuda:0\.\.cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(ModelError, match="unknown `device`"):
        resolve_device("tpu")


class _Recorder:
    """Stands in for from_pretrained: records its arguments, then loads the tiny model for real."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
            real = cls.from_pretrained

            def fake(where: str, *args: Any, _real: Any = real, _cls: Any = cls, **kwargs: Any) -> Any:
                self.calls.append((_cls.__name__, dict(kwargs)))
                keep = {k: v for k, v in kwargs.items() if k in ("dtype", "device_map")}
                return _real(str(self.directory), **keep)

            monkeypatch.setattr(cls, "from_pretrained", fake)


def test_hub_arguments_reach_from_pretrained(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder(tiny_model_dir)
    recorder.patch(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("melbo_tui.models._hub_reachable", lambda: True)
    lm = ModelRequest("org/some-model", device="cpu", trust_remote_code=True, revision="v1.2").load()
    assert [name for name, _ in recorder.calls] == ["AutoTokenizer", "AutoModelForCausalLM"]
    for _, kwargs in recorder.calls:
        assert kwargs["revision"] == "v1.2" and kwargs["trust_remote_code"] is True
        assert "local_files_only" not in kwargs  # online: the hub decides
    assert lm.provenance()["revision"] == "v1.2" and lm.notes == []


def test_offline_only_when_asked_or_unreachable_and_then_said(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder(tiny_model_dir)
    recorder.patch(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = load_model("org/some-model", device="cpu")
    assert recorder.calls[-1][1]["local_files_only"] is True and asked.notes == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("melbo_tui.models._hub_reachable", lambda: False)
    unreachable = load_model("org/some-model", device="cpu")
    assert recorder.calls[-1][1]["local_files_only"] is True
    assert any("unreachable" in note and "cache" in note for note in unreachable.notes)


def test_a_revision_for_a_local_model_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelError, match="`revision` applies to hub ids"):
        load_model(str(tiny_model_dir), revision="main")


def test_provenance_and_resume_across_dtypes_refused(tiny_model_dir: Path, tiny_chat: LoadedModel) -> None:
    bf16 = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    record = tiny_chat.provenance()
    assert record["dtype"] == "float32" and record["device"] == "cpu" and record["model"] == str(tiny_model_dir)
    assert record["commit"] is None and record["devices"] is None and record["offloaded"] is None
    assert bf16.provenance()["dtype"] == "bfloat16"
    check_resume_provenance(record, tiny_chat, "b.safetensors")  # same load: fine
    check_resume_provenance(None, bf16, "old.safetensors")  # a bank without a record: fine
    with pytest.raises(BankError, match=r"made in float32 and the model is loaded in bfloat16; load it with `dtype` float32"):
        check_resume_provenance(record, bf16, "b.safetensors")
    tiny_chat.model.config._commit_hash = "abc123"
    try:
        with pytest.raises(BankError, match="at commit def456"):
            check_resume_provenance({**record, "commit": "def456"}, tiny_chat, "b.safetensors")
    finally:
        tiny_chat.model.config._commit_hash = None


def test_loading_in_a_worker_leaves_the_global_stderr_alone(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The explorer loads in a worker thread while the UI thread draws; stderr must stay the UI's."""
    inside, release = threading.Event(), threading.Event()
    real = transformers.AutoModelForCausalLM.from_pretrained

    def slow(*args: Any, **kwargs: Any) -> Any:
        warnings.warn("advice from transformers while loading", UserWarning)
        inside.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", slow)
    stderr = sys.stderr
    shown: list[str] = []
    loaded: list[LoadedModel] = []
    with warnings.catch_warnings():  # restores the module's filters and showwarning afterwards
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_args, **_kwargs: shown.append(str(message))
        worker = threading.Thread(target=lambda: loaded.append(load_model(str(tiny_model_dir), device="cpu")))
        worker.start()
        try:
            assert inside.wait(60)
            assert sys.stderr is stderr  # not swapped for a StringIO under the UI thread's feet
            print("ui thread still writes", file=sys.stderr)
            warnings.warn("the UI thread's own warning", UserWarning)
        finally:
            release.set()
            worker.join(60)
    assert loaded
    assert "ui thread still writes" in capsys.readouterr().err
    assert "the UI thread's own warning" in shown  # the UI thread's warnings are still shown ...
    assert not any("advice from transformers" in text for text in shown)  # ... the loading thread's are not
