"""The README is true: every command of its Commands block runs as written, one after the other.

Each command gets `--model DIR` added, a small random Llama (20 blocks, 64 wide, the embedded
tokenizer), so the block runs in minutes; the bare `melbo-tui` runs as written, on the embedded
model and the shipped banks, in a real terminal (tmux), and quits. A seed `.pt` file, the only
input the block does not make itself, is not in it: `import` has its own tests.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from melbo_tui.models import LoadedModel

ROOT = Path(__file__).resolve().parent.parent
MELBO = Path(sys.executable).with_name("melbo-tui")
NO_MODEL = {"info", "label", "export"}  # commands that read banks only
INTERACTIVE = {None, "open"}  # the explorer: run in tmux


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Commands"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the Commands section has no bash block"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [c for c in commands if c]


@pytest.fixture(scope="module")
def readme_model(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel) -> Path:
    directory = tmp_path_factory.mktemp("readme-model")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(embedded.tokenizer), hidden_size=64, num_hidden_layers=20, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, bos_token_id=embedded.tokenizer.bos_token_id,
        eos_token_id=embedded.tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    embedded.tokenizer.save_pretrained(directory)
    return directory


def test_the_commands_block_names_every_command() -> None:
    from melbo_tui.cli import _HEAVY_MODULES

    named = {c[1] for c in readme_commands() if len(c) > 1 and not c[1].startswith("-")}
    every = {name for names in _HEAVY_MODULES.values() for name in names} | {"open"}
    assert every - named == {"import"}  # import needs the seed's .pt file: tests/test_seed_import.py


def test_the_readme_fits_on_a_few_screens() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the detail into docs/"


_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but `-` and spaces dropped, spaces to `-`."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_in_the_docs_resolves() -> None:
    from urllib.parse import unquote

    pages = [ROOT / "README.md", ROOT / "vectors" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken: list[str] = []
    for page in pages:
        for target in _LINK.findall(_without_code(page.read_text())):
            if re.match(r"(https?|mailto):", target):
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / unquote(path)).resolve() if path else page
            if not where.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _without_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))  # a link inside code is not a link


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", page.read_text()), re.M)}


@pytest.mark.embedded
@pytest.mark.slow
def test_every_readme_command_runs_as_written(readme_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MELBO_TUI_CACHE": str(_cache_with_models(tmp_path))}
    for argv in readme_commands():
        assert argv[0] == "melbo-tui", argv
        command = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
        extra = [] if command in NO_MODEL or command is None else ["--model", str(readme_model)]
        if command in INTERACTIVE:
            _run_in_tmux([str(MELBO), *argv[1:], *extra], tmp_path, env)
            continue
        done = subprocess.run([str(MELBO), *argv[1:], *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr
    assert {p.name for p in tmp_path.glob("*.safetensors")} >= {"b.safetensors", "ortho1.safetensors", "d.safetensors",
                                                                 "j.safetensors"}
    assert (tmp_path / "ortho1.dump.txt").is_file() and (tmp_path / "v.gguf").is_file()


def _cache_with_models(tmp_path: Path) -> Path:
    from melbo_tui.models import cache_dir

    cache = tmp_path.parent / f"{tmp_path.name}-cache"
    cache.mkdir(exist_ok=True)
    models = cache_dir() / "models"
    if models.is_dir() and not (cache / "models").exists():  # reuse the converted embedded model
        (cache / "models").symlink_to(models)
    return cache


def _run_in_tmux(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    from tests.tui.test_tmux import tmux, wait_pane

    session = f"melbo-readme-{os.getpid()}"
    exports = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("OMP_NUM_THREADS", "MELBO_TUI_CACHE"))
    command = f"cd {shlex.quote(str(cwd))} && {exports} {shlex.join(argv)}; echo melbo-exit=$?; sleep 30"
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    try:
        wait_pane(session, ".safetensors", timeout=60)  # the first frame names the bank it opened
        tmux("send-keys", "-t", session, "q")
        pane = wait_pane(session, "melbo-exit=", timeout=30)
        assert "melbo-exit=0" in pane and "Traceback" not in pane, pane
    finally:
        tmux("kill-session", "-t", session)
