"""Every key of the explorer in one place, each with an id a user can remap.

Remap in `$XDG_CONFIG_HOME/melbo-tui/keys.toml` (or the file named by `$MELBO_TUI_KEYS`):

    [keys]
    quit = "q,ctrl+q"
    select = "space,x"

Values are Textual key names, comma-separated. ctrl+s and ctrl+j are avoided on purpose:
terminals (XON/XOFF) and tmux swallow them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class KeySpec:
    id: str
    keys: str
    action: str
    description: str
    show: bool = False  # in the footer
    group: str = "browse"
    short: str = ""  # footer text; the description otherwise
    priority: bool = False  # before the focused widget's own bindings (a focused text would take left/right)

    @property
    def footer(self) -> str:
        return self.short or self.description


# Each table belongs to the widget or screen that binds it, so a key acts only where it means
# something: list keys on the vector list, panel keys on the main screen, plot keys on the plots.
APP_KEYS: tuple[KeySpec, ...] = (
    KeySpec("quit", "q", "quit", "Quit", True, "app", short="Quit"),
    KeySpec("help", "question_mark", "help", "Help: every key", True, "app", short="Help"),
)

LIST_KEYS: tuple[KeySpec, ...] = (
    KeySpec("cursor_down", "j", "cursor_down", "Next vector (also down arrow)", False, "browse"),
    KeySpec("cursor_up", "k", "cursor_up", "Previous vector (also up arrow)", False, "browse"),
    KeySpec("top", "g", "top", "First row (also home)", False, "browse"),
    KeySpec("bottom", "G", "bottom", "Last row (also end)", False, "browse"),
    KeySpec("sort", "s", "sort", "Sort by the next column (idx, each metric column, label)", False, "browse"),
    KeySpec("reverse", "S", "reverse", "Reverse the sort order", False, "browse"),
    KeySpec("select", "space", "select", "Select / unselect the highlighted vector", True, "compose", short="Select"),
    KeySpec("range", "v", "range", "Range select: press at one end, move, press at the other", False, "compose"),
    KeySpec("clear_selection", "u", "clear_selection", "Clear the selection", False, "compose"),
)

MAIN_KEYS: tuple[KeySpec, ...] = (
    KeySpec("stop", "escape", "stop", "Stop the running generation", True, "generate", short="Stop"),
    KeySpec("jump", "colon", "jump", "Jump to a vector index", False, "browse"),
    KeySpec("filter", "slash", "filter", "Filter rows: kl_seq<0.1, label=code, label~cod (contains), norm>20 and cos<0.5",
            True, "browse", short="Filter"),
    KeySpec("columns", "i", "columns", "What each column means, the value to beat, and the highlighted row's values", False,
            "browse"),
    KeySpec("next_bank", "n", "next_bank", "Switch to the next open bank (each keeps its cursor and selection)", False, "browse"),
    KeySpec("compose", "c", "compose", "Stream the composition of the selected vectors", True, "compose", short="Compose"),
    KeySpec("mode", "m", "mode", "Cycle composition mode: mean, sum, mean x sqrt(k)", False, "compose"),
    KeySpec("scale_up", "plus", "scale(0.25)", "Scale +0.25 (every vector and composition until changed back)", False, "compose"),
    KeySpec("scale_down", "minus", "scale(-0.25)", "Scale -0.25", False, "compose"),
    KeySpec("scale_reset", "equals_sign", "scale_reset", "Scale back to x1", False, "compose"),
    KeySpec("sweep", "w", "sweep", "Sweep: compositions of the first k vectors, k = 1, 2, 3, 5, 10, 20...", False, "compose"),
    KeySpec("compare", "b", "compare", "Compare: steered, unsteered and base completions (or a composition and its parts, "
            "or the selected vectors) side by side, tabbed when narrow", True, "generate", short="Compare"),
    KeySpec("settings", "e", "settings", "Edit prompt, system prompt, temperature, max tokens, seed, scale", True, "generate", short="Settings"),
    KeySpec("regenerate", "r", "regenerate", "Generate again, ignoring the cache", False, "generate"),
    KeySpec("copy", "y", "copy", "Copy the completion to the clipboard (the focused column; OSC 52, works over SSH)", False,
            "generate"),
    KeySpec("export", "x", "export", "Export the completions on screen: the listed rows made on this prompt, unsteered, base "
            "(JSONL and text, in the working directory)", False, "generate"),
    KeySpec("measure", "M", "measure", "Measure the bank's KL columns again on the current prompt, in the background", False, "jobs"),
    KeySpec("ortho", "o", "ortho", "MELBO-ortho from the highlighted vector, in the background, into the working directory "
            "(a dialog shows prompt, count, output and time first)", False, "jobs"),
    KeySpec("train", "T", "train", "MELBO: train new vectors on the current prompt with this bank's layers and radius, "
            "in the background, into the working directory (a dialog first)", False, "jobs"),
    KeySpec("stop_job", "O", "stop_job", "Stop the background job (what it saved stays)", False, "jobs"),
    KeySpec("plots", "p", "plots", "Plots: the bank's KL (moving average) and other columns over the index", True, "app", short="Plots"),
)

PLOT_KEYS: tuple[KeySpec, ...] = (
    KeySpec("plot_close", "escape,p", "close", "Back to the list", True, "plots", short="Back"),
    KeySpec("plot_left", "left,h,k", "move(-1)", "Cursor one vector left (the previous vector)", False, "plots"),
    KeySpec("plot_right", "right,l,j", "move(1)", "Cursor one vector right (the next vector)", False, "plots"),
    KeySpec("plot_first", "home,g", "move_to(0)", "Cursor to the first vector", False, "plots"),
    KeySpec("plot_last", "end,G", "move_to(-1)", "Cursor to the last vector", False, "plots"),
    KeySpec("plot_window_down", "left_square_bracket", "window(-1)", "Smaller moving-average window", True, "plots", short="Window-"),
    KeySpec("plot_window_up", "right_square_bracket", "window(1)", "Larger moving-average window", True, "plots", short="Window+"),
    KeySpec("plot_zoom_in", "z", "zoom(1)", "Zoom in around the cursor", True, "plots", short="Zoom in"),
    KeySpec("plot_zoom_out", "Z", "zoom(-1)", "Zoom out", True, "plots", short="Zoom out"),
)

COMPARE_KEYS: tuple[KeySpec, ...] = (
    KeySpec("compare_close", "escape,b", "close", "Back to the list (stops what streams here)", True, "compare", short="Back"),
    KeySpec("compare_next", "right,l,tab", "column(1)", "Next column (the next tab when narrow)", True, "compare", short="Next",
            priority=True),
    KeySpec("compare_previous", "left,h,shift+tab", "column(-1)", "Previous column", False, "compare", priority=True),
    KeySpec("compare_regenerate", "r", "regenerate", "Generate every column again, ignoring the cache", False, "compare"),
    KeySpec("compare_copy", "y", "copy", "Copy the column shown (or focused) to the clipboard", False, "compare"),
)

HELP_KEYS: tuple[KeySpec, ...] = (
    KeySpec("help_close", "escape,q,question_mark", "dismiss_help", "Close help", True, "help", short="Close"),
    KeySpec("help_down", "j,down", "scroll_help('down')", "Scroll down", False, "help"),
    KeySpec("help_up", "k,up", "scroll_help('up')", "Scroll up", False, "help"),
    KeySpec("help_page_down", "pagedown,space", "scroll_help('page_down')", "Page down", False, "help"),
    KeySpec("help_page_up", "pageup", "scroll_help('page_up')", "Page up", False, "help"),
    KeySpec("help_top", "g,home", "scroll_help('home')", "Top", True, "help", short="Top"),
    KeySpec("help_bottom", "G,end", "scroll_help('end')", "Bottom", True, "help", short="Bottom"),
)

SWEEP_KEYS: tuple[KeySpec, ...] = (
    KeySpec("sweep_close", "escape,w", "close", "Back to the list (stops the sweep)", True, "sweep", short="Back"),
    KeySpec("sweep_down", "j,down", "scroll_rows('down')", "Scroll down", False, "sweep"),
    KeySpec("sweep_up", "k,up", "scroll_rows('up')", "Scroll up", False, "sweep"),
    KeySpec("sweep_page_down", "pagedown", "scroll_rows('page_down')", "Page down", False, "sweep"),
    KeySpec("sweep_page_up", "pageup", "scroll_rows('page_up')", "Page up", False, "sweep"),
    KeySpec("sweep_top", "g,home", "scroll_rows('home')", "Top", False, "sweep"),
    KeySpec("sweep_bottom", "G,end", "scroll_rows('end')", "Bottom", False, "sweep"),
)

TEXT_KEYS: tuple[KeySpec, ...] = (
    KeySpec("text_down", "j,down", "lines(1)", "Scroll the focused completion down", False, "text"),
    KeySpec("text_up", "k,up", "lines(-1)", "Scroll the focused completion up", False, "text"),
    KeySpec("text_page_down", "pagedown,space", "pages(1)", "A page down", False, "text"),
    KeySpec("text_page_up", "pageup", "pages(-1)", "A page up", False, "text"),
    KeySpec("text_top", "g,home", "start", "Its first line (it stops following the stream)", False, "text"),
    KeySpec("text_bottom", "G,end", "end", "Its last line (it follows the stream again)", False, "text"),
)

COLUMNS_KEYS: tuple[KeySpec, ...] = (
    KeySpec("columns_close", "escape,i,q", "close", "Back to the list", True, "columns", short="Back"),
    KeySpec("columns_down", "j,down", "scroll_body('down')", "Scroll down", False, "columns"),
    KeySpec("columns_up", "k,up", "scroll_body('up')", "Scroll up", False, "columns"),
    KeySpec("columns_top", "g,home", "scroll_body('home')", "Top", False, "columns"),
    KeySpec("columns_bottom", "G,end", "scroll_body('end')", "Bottom", False, "columns"),
)

ALL_KEYS = APP_KEYS + LIST_KEYS + MAIN_KEYS + PLOT_KEYS + COMPARE_KEYS + SWEEP_KEYS + TEXT_KEYS + HELP_KEYS + COLUMNS_KEYS

# Textual's key names as a person types them
KEY_NAMES = {"question_mark": "?", "slash": "/", "colon": ":", "plus": "+", "minus": "-", "equals_sign": "=",
             "left_square_bracket": "[", "right_square_bracket": "]", "escape": "esc", "pagedown": "page down",
             "pageup": "page up", "shift+tab": "shift+tab"}


def key_name(keys: str) -> str:
    """`question_mark,q` -> `? / q`: keys as a user reads them (help, palette, messages)."""
    return " / ".join(KEY_NAMES.get(k, k) for k in keys.split(","))

BUILTIN_KEYS: tuple[tuple[str, str], ...] = (
    ("up / down", "Previous / next vector"),
    ("pageup / pagedown", "A page up / down"),
    ("home / end", "First / last row"),
    ("mouse", "Click a row to highlight it, a column header to sort by it"),
    ("ctrl+p", "Command palette (every action by name)"),
    ("tab", "Move focus between the list and the completion (whose j/k/g/G then scroll it)"),
)


def bindings(specs: tuple[KeySpec, ...]) -> list[BindingType]:
    return [Binding(s.keys, s.action, s.footer, show=s.show, id=s.id, tooltip=s.description, priority=s.priority)
            for s in specs]


def config_path() -> Path:
    explicit = os.environ.get("MELBO_TUI_KEYS")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "melbo-tui" / "keys.toml"


def load_keymap(path: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """User overrides `{binding id: keys}` and one warning per thing ignored in the file."""
    path = path or config_path()
    if not path.is_file():
        return {}, []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, [f"{path}: not read ({exc}); default keys in use"]
    table = data.get("keys", data)
    known = {s.id for s in ALL_KEYS}
    keymap: dict[str, str] = {}
    warnings: list[str] = []
    for binding_id, keys in table.items():
        if binding_id not in known:
            warnings.append(f"{path}: unknown key id '{binding_id}' ignored")
        elif not isinstance(keys, str) or not keys.strip():
            warnings.append(f"{path}: '{binding_id}' needs a string such as \"q,ctrl+q\"")
        else:
            keymap[binding_id] = keys.replace(" ", "")
    return keymap, warnings


def effective_keys(spec: KeySpec, keymap: dict[str, str]) -> str:
    return keymap.get(spec.id, spec.keys)
