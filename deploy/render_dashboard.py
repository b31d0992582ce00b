"""Draws deploy/grafana/wallet.json to a PNG from a Prometheus server, with matplotlib.

Grafana is not available here (nor in any package registry this project can install from), so this renders the
dashboard's own queries instead: each panel's targets run as query_range against the Prometheus HTTP API, and the
panel is drawn at its gridPos (24 columns) with its title, unit, legendFormat, thresholds and value mappings. Row,
timeseries and stat panels are drawn. Variables: ${datasource} is the Prometheus given; a query variable ($asset)
takes --var NAME=VALUE, else its current value, else the first of its label values; $__interval is the step and
$__rate_interval max(step + scrape interval, 4 x scrape interval), as Grafana computes them.

    .venv/bin/pip install -e '.[dashboard]'
    .venv/bin/python deploy/render_dashboard.py http://127.0.0.1:9090 --start 2026-12-03T17:05:00Z \\
        --end 2026-12-03T17:13:00Z --scrape-interval 5 --var asset=GOLD --out docs/dashboard.png
"""

import argparse
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from matplotlib.dates import DateFormatter, MinuteLocator
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import FuncFormatter, MaxNLocator

COL_IN, ROW_IN, GAP_IN, HEADER_IN = 0.85, 0.4, 0.06, 0.75  # grid column width, grid row height, margins: inches
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"  # Grafana's dark theme
NAMED = {"green": "#73BF69", "red": "#F2495C", "orange": "#FF9830", "yellow": "#FADE2A", "blue": "#5794F2"}
PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#FADE2A"]  # Grafana's
PALETTE += ["#70DBED", "#F9BA8F", "#E5A8E2", "#B7DBAB", "#C15C17", "#AEA2E0", "#E0752D", "#F29191"]  # classic one,
PALETTE += ["#64B0C8", "#E5AC0E", "#82B5D8", "#629E51", "#F4D598", "#CA95E5", "#FFB357", "#37872D"]  # bright shades
SECONDS = [(1e-3, 1e6, " µs"), (1, 1e3, " ms"), (120, 1, " s"), (7200, 1 / 60, " min"), (math.inf, 1 / 3600, " h")]
SI = [(1e3, 1.0, ""), (1e6, 1e-3, "k"), (1e9, 1e-6, "M"), (math.inf, 1e-9, "G")]
Series = tuple[str, list[float], list[float]]  # legend, times (matplotlib's date numbers: days since 1970), values


def fmt_value(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana shows it in this unit (those the dashboard uses); decimals apply to the unit itself."""
    if math.isnan(value) or unit == "percentunit":
        return "-" if math.isnan(value) else f"{value * 100:.{1 if decimals is None else decimals}f}%"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    steps = SECONDS if unit == "s" else [(limit, scale, name + suffix) for limit, scale, name in SI]
    _, scale, name = next(step for step in steps if abs(value) < step[0] and (value or step[1] == 1))  # 0 in s
    return f"{value * scale:{f'.{decimals}f' if decimals is not None and scale == 1 else '.3g'}}{name}"


class Prometheus:
    def __init__(self, url: str, start: datetime, end: datetime, step: float) -> None:
        self.http, self.start, self.end, self.step = httpx.Client(base_url=url, timeout=30), start, end, step

    def query_range(self, expr: str) -> list[tuple[dict[str, str], list[float], list[float]]]:
        params: dict[str, str | float] = {"query": expr, "start": self.start.timestamp(), "end": self.end.timestamp()}
        params["step"] = self.step
        answer = self.http.get("/api/v1/query_range", params=params).json()
        if answer.get("status") != "success":
            raise SystemExit(f"query failed: {expr}\n  {answer.get('errorType')}: {answer.get('error')}")
        result = answer["data"]["result"]
        return [(s["metric"], [t / 86400 for t, _ in s["values"]], [float(v) for _, v in s["values"]]) for s in result]

    def label_values(self, query: str) -> list[str]:  # Grafana's label_values(metric, label)
        metric, label = [*re.findall(r"\w+", query), "", ""][1:3]
        return list(map(str, self.http.get(f"/api/v1/label/{label}/values", params={"match[]": metric}).json()["data"]))


def variables(dashboard: dict[str, Any], prom: Prometheus, given: dict[str, str], scrape_s: float) -> dict[str, str]:
    values = {"__interval": f"{prom.step:g}s", "__rate_interval": f"{max(prom.step + scrape_s, 4 * scrape_s):g}s"}
    for var in dashboard.get("templating", {}).get("list", []):
        name, current = var["name"], var.get("current", {}).get("value")
        if var["type"] == "datasource":
            values[name] = "prometheus"
        elif name in given or current:
            values[name] = given.get(name) or str(current)
        elif var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            values[name] = (prom.label_values(query) or [""])[0]
    return values


def substitute(text: str, values: dict[str, str]) -> str:
    """$name and ${name} of known variables only (label_replace's ${1} stays)."""
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt).strip() or str(labels or "value")


class Renderer:
    def __init__(self, fig: Figure, prom: Prometheus, values: dict[str, str]) -> None:
        self.fig, self.prom, self.values = fig, prom, values

    def box(self, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """Figure fractions of a rectangle given in inches from the figure's top-left."""
        width, height = self.fig.get_figwidth(), self.fig.get_figheight()
        return x / width, 1 - (y + h) / height, w / width, h / height

    def panel(self, panel: dict[str, Any]) -> None:
        pos, kind = panel["gridPos"], panel["type"]
        x, y = pos["x"] * COL_IN + GAP_IN, HEADER_IN + pos["y"] * ROW_IN + GAP_IN
        w, h = pos["w"] * COL_IN - 2 * GAP_IN, pos["h"] * ROW_IN - 2 * GAP_IN
        title = substitute(panel.get("title", ""), self.values)
        if kind == "row":
            self.fig.text(*self.box(x, y - 0.05, w, h)[:2], title, color="#ffffff", fontsize=13, weight="bold")
            return
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        series = [
            (legend(substitute(target.get("legendFormat", ""), self.values), labels), times, values)
            for target in panel.get("targets", [])
            for labels, times, values in self.prom.query_range(substitute(target["expr"], self.values))
        ]
        fill, text = self.stat_value(defaults, series) if kind == "stat" else (PANEL, "")
        left, bottom, width, height = self.box(x, y, w, h)
        frame = FancyBboxPatch((left, bottom), width, height, "round,pad=0,rounding_size=0.004", facecolor=fill)
        self.fig.add_artist(frame).set(transform=self.fig.transFigure, edgecolor=GRID, linewidth=0.8, zorder=-1)
        self.fig.text(*self.box(x + 0.12, y + 0.3, 0, 0)[:2], title, color="#ffffff", fontsize=10.5, weight="bold")
        if kind == "stat":
            self.fig.text(left + width / 2, bottom + height * 0.42, text, color="#ffffff", fontsize=28, weight="bold",
                          ha="center", va="center")  # fmt: skip
        elif not series:
            self.fig.text(left + width / 2, bottom + height / 2, "No data", color="#8e8e8e", ha="center", fontsize=11)
        else:
            self.timeseries(defaults, series, (x, y, w, h))

    def stat_value(self, defaults: dict[str, Any], series: list[Series]) -> tuple[str, str]:
        last = [value for _, _, values in series for value in values if not math.isnan(value)][-1:]
        if not last:
            return PANEL, str(defaults.get("noValue", "No data"))
        for mapping in defaults.get("mappings", []):
            hit = mapping.get("options", {}).get(f"{last[0]:g}") if mapping["type"] == "value" else None
            if hit:
                return NAMED.get(hit["color"], hit["color"]), hit["text"]
        color = [s["color"] for s in defaults["thresholds"]["steps"] if s["value"] is None or last[0] >= s["value"]][-1]
        return NAMED.get(color, color), fmt_value(last[0], defaults.get("unit", "short"), defaults.get("decimals"))

    def timeseries(self, defaults: dict[str, Any], series: list[Series], rect: tuple[float, ...]) -> None:
        x, y, w, h = rect
        columns = max(1, int(w / 3.3))
        legend_h = 0.2 * math.ceil(len(series) / columns) + 0.1
        ax = self.fig.add_axes(self.box(x + 0.8, y + 0.45, w - 0.95, h - 0.45 - 0.3 - legend_h), facecolor=PANEL)
        unit, decimals, custom = defaults.get("unit", "short"), defaults.get("decimals"), defaults.get("custom", {})
        colors = defaults.get("color", {})  # mode palette-classic (by series, in legend order) or fixed
        for index, (name, times, values) in enumerate(sorted(series, key=lambda one: one[0])):
            color = colors["fixedColor"] if colors.get("mode") == "fixed" else PALETTE[index % len(PALETTE)]
            ax.plot(times, values, color=color, linewidth=1.4, label=name)
            ax.fill_between(times, values, color=color, alpha=custom.get("fillOpacity", 0) / 100, linewidth=0)
        if custom.get("thresholdsStyle", {}).get("mode", "off") != "off":
            for step in defaults["thresholds"]["steps"][1:]:
                ax.axhline(step["value"], color=NAMED.get(step["color"], step["color"]), linestyle="--", linewidth=1)
        ax.set_xlim(self.prom.start.timestamp() / 86400, self.prom.end.timestamp() / 86400)
        ax.set_ylim(bottom=defaults.get("min"))
        ax.xaxis_date()
        ax.yaxis.set_major_locator(MaxNLocator(4, integer=decimals == 0))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: fmt_value(value, unit, decimals)))
        per_tick = (self.prom.end - self.prom.start).total_seconds() / 60 / max(3, (w - 0.95) // 0.8)  # 0.8 in apart
        every = next((m for m in (1, 2, 5, 10, 15, 30, 60, 180, 360, 720) if m >= per_tick), 1440)
        ax.xaxis.set_major_locator(MinuteLocator(interval=every))  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
        ax.set_ylabel(custom.get("axisLabel", ""), color=TEXT, fontsize=8.5)
        ax.tick_params(colors=TEXT, labelsize=8.5, length=0, pad=5)
        ax.grid(color=GRID, linewidth=0.6)
        ax.spines[:].set_visible(False)
        top_left = self.box(x + 0.1, y + h - legend_h, 0, 0)[:2]  # the legend's, at the panel's foot
        ax.legend(loc="upper left", bbox_to_anchor=top_left, bbox_transform=self.fig.transFigure, ncol=columns,
                  fontsize=8.5, frameon=False, labelcolor=TEXT, handlelength=1.2, borderaxespad=0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("prometheus", help="the Prometheus HTTP API's base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, default=Path(__file__).parent / "grafana" / "wallet.json")
    parser.add_argument("--start", type=datetime.fromisoformat, help="RFC 3339 (default: 15 minutes before --end)")
    parser.add_argument("--end", type=datetime.fromisoformat, default=datetime.now(UTC), help="RFC 3339 (default: now)")
    parser.add_argument("--step", type=float, help="seconds between points (default: the range / 240)")
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="Prometheus's, for $__rate_interval")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a dashboard variable")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()
    start = args.start or args.end - timedelta(minutes=15)
    prom = Prometheus(args.prometheus, start, args.end, args.step or max(1.0, (args.end - start).total_seconds() / 240))
    dashboard = json.loads(args.dashboard.read_text())
    values = variables(dashboard, prom, dict(v.split("=", 1) for v in args.var), args.scrape_interval)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig = Figure(figsize=(24 * COL_IN, HEADER_IN + rows * ROW_IN), facecolor=BACKGROUND)
    renderer = Renderer(fig, prom, values)
    shown = "   ".join(f"{k} = {v}" for k, v in values.items() if k not in ("datasource", "__interval"))
    fig.text(*renderer.box(0.12, 0.5, 0, 0)[:2], dashboard["title"], color="#ffffff", fontsize=18, weight="bold")
    span = f"{start:%Y-%m-%d %H:%M:%S} to {args.end:%H:%M:%S} UTC   ·   {shown}   ·   Prometheus {args.prometheus}"
    fig.text(*renderer.box(24 * COL_IN - 0.12, 0.5, 0, 0)[:2], span, color=TEXT, fontsize=10.5, ha="right")
    for panel in dashboard["panels"]:
        renderer.panel(panel)
    fig.savefig(args.out, dpi=100, facecolor=BACKGROUND)
    print(f"{args.out}: {len(dashboard['panels'])} panels, {start:%H:%M:%S} to {args.end:%H:%M:%S} UTC, {values}")


if __name__ == "__main__":
    main()
