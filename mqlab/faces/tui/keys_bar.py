"""The footer: the keys usable now on one line, each clickable. Where the line is too narrow
(an 80-column terminal) the later keys are left out, never help and quit: `?` lists them all.
Textual's Footer would cut the line at the edge, help and quit first."""

from __future__ import annotations

from textual.content import Content
from textual.markup import escape
from textual.screen import Screen
from textual.widget import Widget

SEPARATOR = "  "
#: Actions the footer always shows, whatever the width.
ALWAYS = ("help", "quit")


class KeysBar(Widget):
    """Reads the screen's active bindings (so check_action decides what shows)."""

    DEFAULT_CSS = """
    KeysBar {
        dock: bottom;
        height: 1;
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

    def fitted(self, width: int) -> list[tuple[str, str, str]]:
        """The items that fit on one line of `width` cells, in order; help and quit always."""
        items = self.items()
        kept = [item for item in items if item[2] in ALWAYS]
        used = sum(_size(item) for item in kept) + len(SEPARATOR) * max(0, len(kept) - 1)
        for item in items:
            if item[2] in ALWAYS:
                continue
            if used + len(SEPARATOR) + _size(item) > width:
                break  # the footer keeps its order: no later, shorter key jumps the queue
            kept.append(item)
            used += len(SEPARATOR) + _size(item)
        return [item for item in items if item in kept]

    def render(self) -> Content:
        return Content.from_markup(
            SEPARATOR.join(
                f"[@click=app.{escape(action)}][b $footer-key-foreground]{escape(keys)}[/] "
                f"{escape(desc)}[/]"
                for keys, desc, action in self.fitted(max(10, self.size.width))
            )
        )


def _size(item: tuple[str, str, str]) -> int:
    keys, desc, _action = item
    return len(keys) + 1 + len(desc)
