"""The paced run as a picture (bench/paced.svg, shown in the README): RSS and CPU against
concurrent paced streams, for the service and the baselines, so an operator can size pods.
Plain SVG, written by hand: nothing to install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

KINDS = (
    ("service", "service", "#1f6feb"),
    ("service_memory", "service, no Redis", "#54aeff"),
    ("starlette", "Starlette", "#d1242f"),
    ("raw", "raw ASGI", "#8c959f"),
)
WIDTH, HEIGHT, PAD = 720, 300, 50
PANELS = (("rss_mib", "RSS, MiB (all workers)"), ("cpu_share", "CPU, share of one core"))


def chart(results: dict[str, Any], path: Path) -> None:
    series = {
        kind: sorted((int(n), level) for n, level in results[kind]["paced"]["levels"].items())
        for kind, _, _ in KINDS
        if "paced" in results.get(kind, {})
    }
    if not series:
        return
    most = max(n for points in series.values() for n, _ in points) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {2 * HEIGHT + 40}" '
        'font-family="sans-serif" font-size="12">'
    ]
    for row, (key, label) in enumerate(PANELS):
        top = max(level[key] for points in series.values() for _, level in points) or 1
        parts += _panel(series, key, label, row * (HEIGHT + 20) + 20, most, top)
    parts.append(
        f'<text x="{PAD}" y="{2 * HEIGHT + 34}">'
        "filled: p99 gap between events under 100 ms; hollow: over</text>"
    )
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _panel(
    series: dict[str, list[tuple[int, dict[str, Any]]]],
    key: str,
    label: str,
    y0: int,
    most: int,
    top: float,
) -> list[str]:
    def x(n: float) -> float:
        return PAD + (WIDTH - 2 * PAD) * n / most

    def y(value: float) -> float:
        return y0 + HEIGHT - PAD - (HEIGHT - 2 * PAD) * value / top

    parts = [
        f'<text x="{PAD}" y="{y0 + 14}">{label}, against paced streams (30 events/s each)</text>',
        f'<line x1="{PAD}" y1="{y(0)}" x2="{WIDTH - PAD}" y2="{y(0)}" stroke="#444"/>',
        f'<line x1="{PAD}" y1="{y(0)}" x2="{PAD}" y2="{y(top)}" stroke="#444"/>',
        f'<text x="{PAD - 6}" y="{y(top) + 4}" text-anchor="end">{top:g}</text>',
        f'<text x="{WIDTH - PAD}" y="{y(0) + 16}" text-anchor="end">{most} streams</text>',
    ]
    for i, (kind, name, colour) in enumerate(KINDS):
        points = series.get(kind, [])
        parts.append(f'<text x="{PAD + 140 * i}" y="{y0 + 32}" fill="{colour}">{name}</text>')
        if not points:
            continue
        line = " ".join(f"{x(n):.1f},{y(level[key]):.1f}" for n, level in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>')
        for n, level in points:
            fill = colour if level["passed"] else "white"
            parts.append(
                f'<circle cx="{x(n):.1f}" cy="{y(level[key]):.1f}" r="3" '
                f'fill="{fill}" stroke="{colour}"/>'
            )
    return parts
