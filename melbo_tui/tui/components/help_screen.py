"""`?`: every key the explorer knows, as remapped by the user, plus what the columns mean."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from melbo_tui.tui.keymap import ALL_KEYS, BUILTIN_KEYS, effective_keys

GROUPS = (("app", "App"), ("browse", "Browse the list"), ("compose", "Select and compose"),
          ("generate", "Completions"), ("jobs", "Background jobs"), ("text", "A focused completion (tab to it)"),
          ("compare", "Compare screen (b)"), ("sweep", "Sweep screen (w)"), ("plots", "Plots screen (p)"))

ABOUT = (
    "Columns (nats; P_i = next-token distribution steered by row i at the last prompt position): "
    "KL = KL(P_i || P_base) and KL-rev = KL(P_base || P_i), P_base = the base row's (row 0 of a MELBO-ortho "
    "bank, theta0); KL-seq = the multi-token KL to the base; KL-unst = KL(P_i || P_unsteered), the one that "
    "means something in a MELBO bank, whose row 0 is no reference; err = target-layer error relative to no "
    "steering; norm = ||theta_i||; cos = cosine to the base row; score / sigma = DCT share / Jacobian singular "
    "value. The first KL column is the one for the bank's kind. KL is measured on one prompt, named under "
    "the sparklines; M measures again on the current prompt. KL~ / norm~ = the 7 rows around each row. "
    "Layer S = the residual stream at "
    "the OUTPUT of decoder block S (0-based; HF hidden_states[S+1]); vectors are added at every "
    "position, prompt and generated tokens alike. Keys are remapped by id in "
    "$XDG_CONFIG_HOME/melbo-tui/keys.toml, e.g. [keys] quit = \"q,ctrl+q\"."
)


def pretty(keys: str) -> str:
    names = {"question_mark": "?", "slash": "/", "colon": ":", "plus": "+", "minus": "-",
             "left_square_bracket": "[", "right_square_bracket": "]", "space": "space"}
    return " / ".join(names.get(k, k) for k in keys.split(","))


def help_table(keymap: dict[str, str]) -> Table:
    table = Table(box=None, show_header=False, expand=True, padding=(0, 1))
    table.add_column("key", style="bold cyan", no_wrap=True, min_width=12)
    table.add_column("what it does", ratio=1)
    specs = ALL_KEYS
    for group, title in GROUPS:
        table.add_row(Text(title, style="bold underline"), "")
        for spec in specs:
            if spec.group == group:
                table.add_row(f"{pretty(effective_keys(spec, keymap))}", f"{spec.description}  [dim]({spec.id})[/dim]")
        if group == "browse":
            for keys, what in BUILTIN_KEYS:
                table.add_row(keys, what)
    return table


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss_help", "Close help", show=True),
    ]

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__()
        self._user_keys = keymap

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static(Text("melbo-tui explorer: keys", style="bold"))
            yield Static(help_table(self._user_keys))
            yield Static(Text(ABOUT, style="dim"))

    def action_dismiss_help(self) -> None:
        if self.is_active:
            self.dismiss(None)
