"""Server-rendered SVG bar charts of messages and errors per time bucket (no chart script in the browser)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 170
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 10, 22
MESSAGES_FILL, ERRORS_FILL, GRID = "#7fb3c6", "#c8473e", "#e6eaef"


@dataclass
class Bucket:
    start: datetime
    messages: int = 0
    errors: int = 0


def buckets_between(since: datetime, until: datetime, step: timedelta) -> list[Bucket]:
    """Every bucket of the span, empty ones included, so that a quiet hour shows as a gap, not as nothing."""
    found, at = [], since
    while at < until:
        found.append(Bucket(at))
        at += step
    return found


def _nice_ceiling(value: int) -> int:
    for nice in (2, 4, 10, 20, 40, 60, 100, 200, 400, 600, 1000, 2000, 4000, 6000, 10000):  # halves are whole
        if value <= nice:
            return nice
    magnitude = 2 * 10 ** (len(str(value)) - 1)
    return -(-value // magnitude) * magnitude


def bar_chart(buckets: list[Bucket], label_every: int, label_format: str, title: str) -> Markup:
    """Bars of messages with their errors drawn over them in red, a y axis with a rounded top, x labels."""
    top = _nice_ceiling(max((b.messages for b in buckets), default=0) or 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(buckets), 1)
    bar = max(slot * 0.72, 1.0)
    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             'xmlns="http://www.w3.org/2000/svg" font-family="inherit" font-size="10">']  # fmt: skip
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 3:.1f}" text-anchor="end" fill="#8a94a3">'
                     f"{round(top * fraction):g}</text>")  # fmt: skip
    for n, bucket in enumerate(buckets):
        x = LEFT + n * slot + (slot - bar) / 2
        for value, fill in ((bucket.messages, MESSAGES_FILL), (bucket.errors, ERRORS_FILL)):
            if value:
                h = max(plot_h * value / top, 1.5)
                parts.append(f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                             f'rx="1.5" fill="{fill}"><title>{bucket.start:%Y-%m-%d %H:%M} UTC: '
                             f"{_counted(bucket.messages, 'message')}, {_counted(bucket.errors, 'error')}</title>"
                             "</rect>")  # fmt: skip
        if n % label_every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" fill="#5b6675">'
                         f"{bucket.start.strftime(label_format)}</text>")  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
