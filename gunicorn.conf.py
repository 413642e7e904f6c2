"""Gunicorn settings for production: ``gunicorn -c gunicorn.conf.py app:app``.

gevent workers hold thousands of long streams each. The address and the request
cap come from the app's own settings (config.json, then the environment), so one
place configures both. Any value here can still be overridden on the command
line or in ``GUNICORN_CMD_ARGS``.
"""

import os
import shutil
import sys

from config import ConfigError, load_settings

try:
    _settings = load_settings()
except ConfigError as exc:
    print(f"configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

bind = f"{_settings.HOST}:{_settings.PORT}"
worker_class = "gevent"
# One process by default; WEB_CONCURRENCY=N runs N workers (about one per core), which share the account
# state, conversations and counters through STATE_FILE (or REDIS_URL): README "Several workers and hosts".
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Room above the app's cap, so a request past it is accepted and refused with a 429 by the app
# instead of waiting unaccepted in the listen queue.
worker_connections = _settings.MAX_CONCURRENT_REQUESTS + 100
# gevent workers notify the arbiter while streams run; this only catches a blocked event loop.
timeout = 60
# A restart (HUP, deploy, stop) lets open streams finish: thinking runs for minutes, video for five.
graceful_timeout = 330
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx closes idle connections, never us
# under a request it is about to send.
keepalive = 75
# No preload: the gevent worker patches the standard library first, then imports the app.
preload_app = False
# Client mode carries the caller's Qwen cookie in Authorization: browsers send cookies of 8-16 KB,
# past gunicorn's 8 KB default for one header. 32 KB per header (nginx: large_client_header_buffers).
limit_request_field_size = 32768
# Heartbeat files in memory: a container's overlay /tmp can stall them.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# Access log without secrets: the path without its query string, no user, no referer, no headers
# (the API key travels in Authorization, which is never logged).
accesslog = "-"
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'
errorlog = "-"
loglevel = "info"
# gunicorn 25.1+ opens a control socket at one fixed path per user, which a second instance
# (a test, a benchmark, another deployment) would fight over; nothing here uses it.
control_socket_disable = True

# Prometheus counters under several workers: each worker writes its own files in one directory and a
# scrape of /metrics adds them up. PROMETHEUS_MULTIPROC_DIR is honoured; unset, the directory is one per
# port in the data directory, so two instances on one host keep theirs apart. It is emptied when the
# master starts (last run's figures would add up with this run's) and a worker's live gauges go with it;
# the default one is removed when the master exits.
_own_metrics_dir = ""
if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _data_dir = getattr(_settings, "DATA_DIR", "") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    _own_metrics_dir = os.path.join(_data_dir, f"prometheus-{_settings.PORT}")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir


def on_starting(server):  # noqa: ARG001 (gunicorn's hook signature)
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))


def worker_exit(server, worker):  # noqa: ARG001
    # In the worker, as it exits (graceful stop, quick stop, restart): its places in the shared counts go back,
    # and its spare chats and queued chat deletions go to the site, now (app.close_app).
    application = getattr(worker, "wsgi", None)
    if hasattr(application, "extensions"):  # built: the app factory ran in this worker
        from app import close_app

        close_app(application)


def child_exit(server, worker):  # noqa: ARG001
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ARG001
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
