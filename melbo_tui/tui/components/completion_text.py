"""A streaming completion: append-only text, word-wrapped, drawn line by line (Textual's Line API).

Streaming appends a piece per token; only the last wrapped line is wrapped again (greedy
wrapping never moves an earlier break), so a long completion never re-renders what is shown.
A streaming completion follows its tail until the reader scrolls up (then it stays where
they are), and again once they are back at the bottom: following is a state, not a guess from
where the view is, so a layout that shrinks the view mid-stream does not stop it. A completion
shown whole (from the cache) starts at its first line.
"""

from __future__ import annotations

from pathlib import Path

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from melbo_tui.tui.keymap import TEXT_KEYS, bindings

NOTE_STYLE = Style(dim=True, italic=True)
Span = tuple[int, int]  # [start, end) character offsets of one wrapped line


def wrap_spans(text: str, start: int, width: int) -> list[Span]:
    """Greedy word wrap of `text[start:]` into lines of at most `width` cells; spaces at breaks are dropped."""
    width = max(1, width)
    spans: list[Span] = []
    line_start, col, last_space = start, 0, -1
    for i in range(start, len(text)):
        c = text[i]
        if c == "\n":
            spans.append((line_start, i))
            line_start, col, last_space = i + 1, 0, -1
            continue
        w = cell_len(c)
        if col + w > width:
            if c == " ":  # the break falls on a space: drop it
                spans.append((line_start, i))
                line_start, col, last_space = i + 1, 0, -1
                continue
            if last_space >= line_start:  # break after the last word that fits
                spans.append((line_start, last_space))
                line_start = last_space + 1
                col = cell_len(text[line_start:i])
            else:  # a word longer than the line: cut it
                spans.append((line_start, i))
                line_start, col = i, 0
            last_space = -1
        if c == " ":
            last_space = i
        col += w
    spans.append((line_start, len(text)))
    return spans


class CompletionText(ScrollView, can_focus=True):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS = bindings(TEXT_KEYS)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._text = ""
        self._note = ""
        self._spans: list[Span] = [(0, 0)]  # wrapped lines of the text
        self._note_lines: list[str] = []
        self._width = 0
        self._strips: dict[int, Strip] = {}  # rendered lines by index, dropped from the first line wrapped again
        self._style: Style | None = None  # the widget's own style (costly to look up: cached until styles change)
        self._follow = True  # streamed text scrolls into view (until the reader scrolls up)

    @property
    def text(self) -> str:
        return self._text

    @property
    def note(self) -> str:
        return self._note

    def reset(self, text: str = "", note: str = "") -> None:
        """Show a new completion from its first line: a cached one stays there, an empty one (about
        to stream) follows its tail as it comes."""
        self._text, self._note = text, note
        self._rewrap(0)
        self.scroll_home(animate=False, immediate=True, force=True)
        self._follow = not text

    def append(self, piece: str) -> None:
        """Add a streamed piece; only the last line is wrapped again."""
        self._text += piece
        self._rewrap(len(self._spans) - 1)
        self._keep_up()

    def set_note(self, note: str) -> None:
        """The dim line under the text: token count and speed, stopped, or why nothing streams."""
        self._note = note
        self._rewrap(len(self._spans) - 1)
        self._keep_up()

    def _keep_up(self) -> None:
        if self._follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)  # before its scrollbar shows
            self.call_after_refresh(self._sync_scrollbar)

    def _sync_scrollbar(self) -> None:
        """A scrollbar that appears after the view scrolled starts at the top (Textual 8.2 sets its
        position only on a scroll): put its thumb where the view is."""
        if self.show_vertical_scrollbar:
            self.vertical_scrollbar.position = self.scroll_y

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new >= self.max_scroll_y:  # at the bottom (also after a resize clamped it there): follow
            self._follow = True
        elif new < old:  # the reader went up: stay where they are
            self._follow = False

    # keys: no animation, so the position a reader chose is the one the next piece sees

    def action_lines(self, delta: int) -> None:
        self.scroll_to(y=self.scroll_offset.y + delta, animate=False, force=True, immediate=True)

    def action_pages(self, delta: int) -> None:
        self.scroll_to(y=self.scroll_offset.y + delta * max(1, self.size.height - 1), animate=False, force=True, immediate=True)

    def action_start(self) -> None:
        self.scroll_home(animate=False, force=True, immediate=True)
        self._follow = False

    def action_end(self) -> None:
        self.scroll_end(animate=False, force=True, immediate=True)
        self._follow = True

    def on_resize(self) -> None:
        if self._line_width() != self._width:
            self._rewrap(0)
        self._keep_up()

    def _line_width(self) -> int:
        return max(8, self.scrollable_content_region.width)

    def _rewrap(self, from_line: int) -> None:
        width = self._line_width()
        if width != self._width:
            self._width, from_line = width, 0
        from_line = max(0, min(from_line, len(self._spans) - 1))
        start = self._spans[from_line][0]
        self._spans[from_line:] = wrap_spans(self._text, start, width)
        self._strips = {i: strip for i, strip in self._strips.items() if i < from_line}
        note_spans = wrap_spans(self._note, 0, width) if self._note else []
        self._note_lines = [self._note[a:b] for a, b in note_spans]
        self.virtual_size = Size(width, self._line_count())
        self.refresh()

    def _line_count(self) -> int:
        text_lines = len(self._spans) if self._text else 0
        return text_lines + len(self._note_lines)

    def lines(self) -> list[str]:
        """Every wrapped line, as drawn (tests read what a user would)."""
        text = [self._text[a:b] for a, b in self._spans] if self._text else []
        return text + self._note_lines

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()  # focus changes the background
        self._style = None

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        strip = self._strips.get(index)
        if strip is None:
            strip = self._strips[index] = self._line_strip(index)
        return strip

    def _line_strip(self, index: int) -> Strip:
        if self._style is None:
            self._style = self.rich_style
        width, base = self.size.width, self._style
        text_lines = len(self._spans) if self._text else 0
        if index < text_lines:
            a, b = self._spans[index]
            segment = Segment(self._text[a:b], base)
        elif index - text_lines < len(self._note_lines):
            segment = Segment(self._note_lines[index - text_lines], base + NOTE_STYLE)
        else:
            return Strip.blank(width, base)
        return Strip([segment]).crop_extend(0, width, base)
