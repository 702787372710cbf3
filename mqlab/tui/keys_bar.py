"""The footer: the keys usable now, wrapped onto a second line where one is too narrow (an
80-column terminal), each clickable. Textual's Footer keeps to one line and cuts the rest."""

from __future__ import annotations

from textual.content import Content
from textual.markup import escape
from textual.screen import Screen
from textual.widget import Widget

SEPARATOR = "  "


class KeysBar(Widget):
    """Reads the screen's active bindings (so check_action decides what shows)."""

    DEFAULT_CSS = """
    KeysBar {
        dock: bottom;
        height: auto;
        background: $footer-background;
        color: $footer-description-foreground;
        padding: 0 1;
    }
    """

    def on_mount(self) -> None:
        self.watch_screen = self.screen
        self.watch_screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def _bindings_changed(self, _screen: Screen[object]) -> None:
        self.refresh(layout=True)

    def on_resize(self) -> None:
        self.refresh(layout=True)

    def items(self) -> list[tuple[str, str, str]]:
        """(keys shown, description, action) of each usable binding, grouped ones merged."""
        out: list[tuple[str, str, str]] = []
        groups: dict[str, int] = {}
        for _node, binding, enabled, _tip in self.watch_screen.active_bindings.values():
            if not binding.show or not enabled:
                continue
            key = self.app.get_key_display(binding)
            if binding.group is not None:
                label = binding.group.description
                if label in groups:
                    keys, desc, action = out[groups[label]]
                    out[groups[label]] = (keys + key, desc, action)
                    continue
                groups[label] = len(out)
                out.append((key, label, binding.action))
            elif all(action != binding.action for _, _, action in out):
                out.append((key, binding.description, binding.action))
        return out

    def lines(self, width: int) -> list[list[tuple[str, str, str]]]:
        """The items broken into lines of at most `width` cells (never inside an item)."""
        lines: list[list[tuple[str, str, str]]] = [[]]
        used = 0
        for item in self.items():
            size = len(item[0]) + 1 + len(item[1])
            extra = size if not lines[-1] else len(SEPARATOR) + size
            if lines[-1] and used + extra > width:
                lines.append([])
                used, extra = 0, size
            lines[-1].append(item)
            used += extra
        return lines

    def render(self) -> Content:
        rows = []
        for line in self.lines(max(10, self.size.width)):
            rows.append(
                SEPARATOR.join(
                    f"[@click=app.{escape(action)}][b $footer-key-foreground]{escape(keys)}[/] "
                    f"{escape(desc)}[/]"
                    for keys, desc, action in line
                )
            )
        return Content.from_markup("\n".join(rows))

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return len(self.lines(width))
