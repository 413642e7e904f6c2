"""What the admin page shows, gathered from what the pool, the usage book, the metrics and the catalog know.

``page_data`` reads the same sources as ``/health``, ``/admin/api/accounts``,
``/admin/api/usage`` and ``/metrics``; ``hourly_chart`` turns ``Usage.summary()``'s
hourly list into the coordinates of a server-drawn SVG (no script on the page).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from identity_pool import IdentityPool
from routes.metrics import PREFIX, Metrics
from routes.recent_errors import RecentErrors
from routes.usage import HOUR, Usage, label

#: The chart's hours, and its drawing box (SVG user units).
CHART_HOURS = 24
WIDTH, HEIGHT = 720, 160
TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "reasoning_tokens")


def tokens(counts: Mapping[str, Any]) -> int:
    return sum(int(counts.get(k, 0)) for k in TOKEN_KINDS)


def hourly_chart(hourly: Sequence[Mapping[str, int]], now: float, hours: int = CHART_HOURS) -> dict[str, Any]:
    """Bars for requests and a line for tokens over the last ``hours`` hours, scaled to the box."""
    last = int(now) // HOUR * HOUR
    by_hour = {int(h["hour"]): h for h in hourly}
    series = [by_hour.get(last - (hours - 1 - i) * HOUR, {}) for i in range(hours)]
    requests = [int(h.get("requests", 0)) for h in series]
    counted = [int(h.get("tokens", 0)) for h in series]
    top_r, top_t = max(requests) or 1, max(counted) or 1
    step = WIDTH / hours
    bars = [{"x": round(i * step + 1, 1), "w": round(step - 2, 1), "h": round(n / top_r * (HEIGHT - 10), 1),
             "y": round(HEIGHT - n / top_r * (HEIGHT - 10), 1), "n": n,
             "hour": time.strftime("%H:00", time.gmtime(last - (hours - 1 - i) * HOUR))}
            for i, n in enumerate(requests)]
    line = " ".join(f"{round(i * step + step / 2, 1)},{round(HEIGHT - n / top_t * (HEIGHT - 10), 1)}"
                    for i, n in enumerate(counted))
    return {"width": WIDTH, "height": HEIGHT, "bars": bars, "line": line, "max_requests": max(requests),
            "max_tokens": max(counted), "requests": sum(requests), "tokens": sum(counted), "hours": hours}


def open_streams(metrics: Metrics | None) -> int | None:
    """Streamed turns in progress, as ``/metrics`` reports them (all live workers under gunicorn)."""
    if metrics is None:
        return None
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        if family.name == f"{PREFIX}_open_streams":
            return int(sum(sample.value for sample in family.samples))
    return 0


def accounts(pool: IdentityPool, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each account as ``/health`` shows it, with its usage today and over 7 days."""
    today, week = summary.get("today", {}).get("by_account", {}), summary.get("7d", {}).get("by_account", {})
    out = []
    for entry in pool.snapshot()["accounts"]:
        name = label(entry["account"])
        out.append({**entry, "usage_today": today.get(name, {}), "usage_7d": week.get(name, {})})
    return out


def page_data(pool: IdentityPool, book: Usage | None, metrics: Metrics | None, catalog_source: str,
              errors: RecentErrors | None) -> dict[str, Any]:
    """Everything the page shows; masked ids and proxy hosts only, never a credential."""
    summary = book.summary() if book is not None else {"today": {}, "7d": {}, "hourly": []}
    keys = sorted(set(summary["today"].get("by_key", {})) | set(summary["7d"].get("by_key", {})))
    return {
        "accounts": accounts(pool, summary),
        "keys": [{"name": k, "today": summary["today"]["by_key"].get(k, {}), "week": summary["7d"]["by_key"][k]}
                 for k in keys],
        "total_today": summary["today"].get("total", {}),
        "total_week": summary["7d"].get("total", {}),
        "chart": hourly_chart(summary["hourly"], time.time()),
        "models_source": catalog_source,
        "open_streams": open_streams(metrics),
        "errors": errors.newest_first() if errors is not None else [],
    }
