"""`?`: every key the explorer knows, as remapped by the user, then what each column means.

The screen is opaque: nothing of the list behind it shows through. j/k, page keys and g/G
scroll it like every other scrollable view.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from melbo_tui.tui.columns import COLUMNS
from melbo_tui.tui.components.footer import ExplorerFooter
from melbo_tui.tui.keymap import ALL_KEYS, BUILTIN_KEYS, HELP_KEYS, bindings, effective_keys, key_name

GROUPS = (("app", "App"), ("browse", "Browse the list"), ("compose", "Select and compose"),
          ("generate", "Completions"), ("jobs", "Background jobs"), ("text", "A focused completion (tab to it)"),
          ("compare", "Compare screen (b)"), ("sweep", "Sweep screen (w)"), ("plots", "Plots screen (p)"),
          ("columns", "Columns screen (i)"), ("help", "This screen"))

KEY_WIDTH = 18  # "pageup / pagedown", "escape / q / ?"
ABOUT = (
    "KL is in nats; P_i = the next-token distribution steered by row i, P_base by the base row (θ0 of a "
    "MELBO-ortho bank). ✓ = closer to the base than no vector at all (the unsteered value, named in the "
    "legend line above the list). KL is measured on one prompt, named under the sparklines; M measures "
    "again on the current prompt. Layer S = the residual stream at the OUTPUT of decoder block S (0-based; "
    "HF hidden_states[S+1]); vectors are added at every position, prompt and generated tokens alike. Jobs "
    "(o, T) and exports (x) write into the working directory (or --workspace). Keys are remapped by id in "
    "$XDG_CONFIG_HOME/melbo-tui/keys.toml, e.g. [keys] quit = \"q,ctrl+q\"."
)


def key_table() -> Table:
    table = Table(box=None, show_header=False, expand=True, padding=(0, 1))
    table.add_column("key", style="bold cyan", no_wrap=True, width=KEY_WIDTH)
    table.add_column("what it does", ratio=1)
    return table


def help_tables(keymap: dict[str, str]) -> list[tuple[str, Table]]:
    """One titled table per group of keys, in the order a reader meets them."""
    out = []
    for group, title in GROUPS:
        table = key_table()
        for spec in ALL_KEYS:
            if spec.group == group:
                table.add_row(key_name(effective_keys(spec, keymap)), Text.assemble(spec.description, (f"  ({spec.id})", "dim")))
        if group == "browse":
            for keys, what in BUILTIN_KEYS:
                table.add_row(keys, what)
        out.append((title, table))
    return out


def columns_table() -> Table:
    table = key_table()
    for info in COLUMNS.values():
        better = f"  {info.better.value} = {info.why}" if info.better else ""
        table.add_row(info.title, Text.assemble(info.meaning, (better, "green")))
    return table


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS = bindings(HELP_KEYS)

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__()
        self._user_keys = keymap

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static(Text("melbo-tui explorer: keys", style="bold"))
            for title, table in help_tables(self._user_keys):
                yield Static(Text(title, style="bold underline"))
                yield Static(table)
            yield Static(Text("Columns", style="bold underline"))
            yield Static(columns_table())
            yield Static(Text(ABOUT, style="dim"))
        yield ExplorerFooter()

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()

    def action_scroll_help(self, where: str) -> None:
        body = self.query_one("#help-body", VerticalScroll)
        getattr(body, f"scroll_{where}")(animate=False)

    def action_dismiss_help(self) -> None:
        if self.is_active:
            self.dismiss(None)
