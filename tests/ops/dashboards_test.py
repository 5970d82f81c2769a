#!/usr/bin/python3
"""The Grafana dashboards and the IndexCache counters against real processes.

1. Every dashboard in deploy/grafana/dashboards/ is checked for the structure Grafana needs (unique ids,
   grid positions, the datasource variable on every query).
2. A local cluster runs the bundled model with every layer Full; under load, each worker's /metrics
   shows indexer runs and no skips, no index-key bytes saved, and an estimated speedup of 1.
3. A second cluster runs the 1/4 pattern (--index-freq 4) over the TCP handoff, with reuse telemetry on
   every prompt-starting step and chunks long enough for a prompt's rows to see more than index_topk keys
   (so the reuse-overlap panels have rows); its counters must obey the pattern exactly:
   skips / runs = Shared / Full layers (every token passes every layer), index-key bytes not stored =
   skips x index_head_dim x 4, bytes not sent = index-key bytes sent x Shared / Full.
4. A real Prometheus (/usr/bin/prometheus, loopback, 1 s scrapes) scrapes that cluster under load, then
   every panel query of every dashboard is evaluated through /api/v1/query: each must succeed and
   return at least one series.

Every process started here is stopped at the end, also when a check fails; each runs with a parent-death
signal, so none outlives this script. Ports are free ones picked by the kernel.
"""

import argparse
import concurrent.futures
import ctypes
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PR_SET_PDEATHSIG = 1
# What Grafana substitutes, at values that fit 1 s scrapes: a rate window holding many samples.
GRAFANA_VARIABLES = {"$__rate_interval": "20s", "$__interval": "2s", "$__range": "2m"}
PROMPTS = [
    "The lightning indexer scores every earlier token",
    "Shared layers reuse the top-k of the nearest Full layer",
    "Disaggregated serving splits prefill from decode",
    "A paged KV cache hands out blocks",
    # Longer than the bundled model's index_topk (64) in tokens: reuse telemetry measures its rows.
    "The router dispatches each request to a prefill worker and a decode worker; the prefill worker runs "
    "the prompt, the Full layers' indexers pick the top-k keys and the KV cache is built, then it ships "
    "the cache with the index keys of the Full layers to the decode worker, which generates tokens and "
    "reuses each Full layer's top-k on the Shared layers that follow it.",
]


class Failure(Exception):
    pass


def die_with_parent():
    """preexec_fn: the child gets SIGTERM when this script dies, however it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


# ---------------------------------------------------------------------------------------------------
# The text exposition, parsed into {(name, frozenset(labels)): value}.

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise Failure(f"not a sample line in /metrics: {line!r}")
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def value(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    if not found:
        raise Failure(f"/metrics has no {name}{labels}")
    return sum(found)


def scrape(address):
    status, content_type, body = http_get(f"http://{address}/metrics")
    if status != 200 or not content_type.startswith("text/plain; version=0.0.4"):
        raise Failure(f"GET http://{address}/metrics: {status} {content_type}")
    return parse_exposition(body)


# ---------------------------------------------------------------------------------------------------
# Processes.

class Process:
    def __init__(self, name, argv, log_dir, stdout=subprocess.DEVNULL):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=stdout, stderr=self.log, preexec_fn=die_with_parent,
                                     text=True, start_new_session=True)

    def stop(self, grace):
        """SIGTERM (a cluster drains its services), then SIGKILL to the whole group after `grace` s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"{self.name}: did not stop in {grace} s, killing it", file=sys.stderr)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of its group still there
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()

    def tail(self, lines=30):
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])


class Cluster(Process):
    """`indexcache cluster up` with metrics on free ports; knows each service's metrics address."""

    def __init__(self, indexcache, model, pattern_flags, log_dir, name, max_batch_tokens=32):
        argv = [indexcache, "cluster", "up", "--model", model, "--prefill", "1", "--decode", "1", "--threads", "1",
                "--kv-cache-mb", "64", "--max-batch-tokens", str(max_batch_tokens), "--metrics-port-base", "0"]
        argv += pattern_flags
        super().__init__(name, argv, log_dir, stdout=subprocess.PIPE)
        self.metrics = {}
        self.router = None
        try:
            self._wait_ready()
        except BaseException:
            self.stop(30)
            raise

    def _wait_ready(self):
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 90
        while self.router is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise Failure(f"{self.name} exited ({self.proc.returncode}) before it was ready:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise Failure(f"{self.name} not ready in 90 s:\n{self.tail()}")
                continue
            words = line.split()
            if words[:1] == ["metrics"] and len(words) == 3:
                self.metrics[words[1]] = words[2]
            elif words[:1] == ["ready"]:
                self.router = words[1]
        for service in ("router", "prefill-0", "decode-0"):
            if not self.metrics.get(service):
                raise Failure(f"{self.name} printed no metrics address for {service}: {self.metrics}")

    def load(self, indexcache, requests):
        """Generates for `requests` prompts, two at a time; every request must finish."""
        def one(i):
            out = subprocess.run([indexcache, "client", "generate", "--router", self.router, "--prompt",
                                  PROMPTS[i % len(PROMPTS)], "--max-new-tokens", "12", "--temperature", "0",
                                  "--ignore-eos", "--json", "--timeout", "60"],
                                 capture_output=True, text=True, timeout=90)
            if out.returncode != 0:
                raise Failure(f"client request {i} failed: {out.stderr.strip()}")
            return json.loads(out.stdout)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return list(pool.map(one, range(requests)))


# ---------------------------------------------------------------------------------------------------
# Checks.

def check_dashboard_structure(path):
    with open(path) as f:
        board = json.load(f)
    for key in ("uid", "title", "panels", "schemaVersion", "templating"):
        if key not in board:
            raise Failure(f"{path}: no {key}")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    if variables.get("datasource", {}).get("type") != "datasource":
        raise Failure(f"{path}: no datasource variable")
    ids = [p["id"] for p in board["panels"]]
    if len(ids) != len(set(ids)):
        raise Failure(f"{path}: duplicate panel ids")
    queries = []
    for panel in board["panels"]:
        g = panel["gridPos"]
        if g["x"] < 0 or g["w"] <= 0 or g["x"] + g["w"] > 24 or g["h"] <= 0:
            raise Failure(f"{path}: panel {panel['title']!r} lies outside Grafana's 24-column grid")
        if not panel.get("targets"):
            raise Failure(f"{path}: panel {panel['title']!r} has no query")
        for target in [panel] + panel["targets"]:
            if target["datasource"].get("uid") != "${datasource}":
                raise Failure(f"{path}: panel {panel['title']!r} does not use the datasource variable")
        for target in panel["targets"]:
            queries.append((panel["title"], target["refId"], target["expr"]))
    return board["uid"], queries


def check_counters(cluster, transport, full, shared, index_head_dim):
    """The IndexCache counters of both workers against the pattern's layer counts; the handoff bytes
    under the transport the cluster used."""
    for role in ("prefill", "decode"):
        s = scrape(cluster.metrics[f"{role}-0"])
        runs = value(s, "indexcache_indexer_runs_total", role=role)
        skips = value(s, "indexcache_indexer_skips_total", role=role)
        not_stored = value(s, "indexcache_index_key_bytes_not_stored_total", role=role)
        not_sent = value(s, "indexcache_index_key_bytes_not_sent_total", role=role)
        keys_moved = value(s, "indexcache_handoff_bytes_total", role=role, payload="index_keys", transport=transport)
        kv_moved = value(s, "indexcache_handoff_bytes_total", role=role, payload="kv", transport=transport)
        speedup = value(s, "indexcache_estimated_speedup_vs_all_full", role=role)
        forward = value(s, "indexcache_forward_seconds_total", role=role)
        indexer = value(s, "indexcache_indexer_seconds_total", role=role)
        print(f"  {role}: runs {runs:.0f} skips {skips:.0f} not stored {not_stored:.0f} B, not sent {not_sent:.0f} B, "
              f"index keys moved {keys_moved:.0f} B, kv {kv_moved:.0f} B, forward {forward:.3f} s, "
              f"indexer {indexer:.3f} s, estimated speedup {speedup:.3f}")
        if runs <= 0 or forward <= 0 or indexer <= 0 or kv_moved <= 0 or keys_moved <= 0:
            raise Failure(f"{role}: counters did not move under load")
        if value(s, "indexcache_layers", role=role, kind="full") != full or \
           value(s, "indexcache_layers", role=role, kind="shared") != shared:
            raise Failure(f"{role}: indexcache_layers does not show {full} Full and {shared} Shared layers")
        # Every token passes every layer: runs = Full x tokens, skips = Shared x tokens.
        if skips * full != runs * shared:
            raise Failure(f"{role}: skips/runs = {skips}/{runs}, the pattern says {shared}/{full}")
        if not_stored != skips * index_head_dim * 4:
            raise Failure(f"{role}: {not_stored} index-key bytes not stored, expected skips x {index_head_dim} x 4")
        # Each layer's index keys weigh the same: the Shared layers' share of what moved, unsent.
        if abs(not_sent - keys_moved * shared / full) > 1e-6 * max(1.0, not_sent):
            raise Failure(f"{role}: {not_sent} index-key bytes not sent, expected {keys_moved} x {shared}/{full}")
        if shared == 0 and speedup != 1:
            raise Failure(f"{role}: estimated speedup {speedup} with every layer Full")
        if shared > 0 and not speedup > 1:
            raise Failure(f"{role}: estimated speedup {speedup} with {shared} Shared layers")


def prometheus_query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        _, _, body = http_get(url)
    except urllib.error.HTTPError as e:
        return {"status": "error", "error": e.read().decode()}
    return json.loads(body)


def start_prometheus(prometheus, cluster, work):
    port = free_port()
    config = os.path.join(work, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n")
        for job, service in (("indexcache-router", "router"), ("indexcache-prefill", "prefill-0"),
                             ("indexcache-decode", "decode-0")):
            f.write(f"  - job_name: {job}\n    static_configs:\n      - targets: ['{cluster.metrics[service]}']\n")
    server = Process("prometheus", [prometheus, f"--config.file={config}",
                                    f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
                                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], work)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if http_get(f"{base}/-/ready", timeout=2)[0] == 200:
                return server, base
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.stop(10)
            raise Failure(f"prometheus did not become ready:\n{server.tail()}")
        time.sleep(0.2)


def wait_for_scrapes(base, router_requests, deadline_s=30):
    """Until Prometheus has every service up and has seen all `router_requests` finish."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        up = prometheus_query(base, 'sum(up{job=~".*indexcache.*"})')
        done = prometheus_query(base, 'sum(indexcache_requests_total{outcome="ok"})')
        up_n = float(up["data"]["result"][0]["value"][1]) if up.get("data", {}).get("result") else 0
        done_n = float(done["data"]["result"][0]["value"][1]) if done.get("data", {}).get("result") else 0
        if up_n == 3 and done_n >= router_requests:
            time.sleep(3)  # a few more scrapes, so every rate window holds samples after the load
            return
        time.sleep(0.5)
    raise Failure(f"prometheus did not scrape the load in {deadline_s} s (up {up}, requests {done})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--indexcache", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dashboards", required=True)
    parser.add_argument("--prometheus", default="/usr/bin/prometheus")
    args = parser.parse_args()
    if not shutil.which(args.prometheus):
        raise Failure(f"{args.prometheus} not found: install Debian's prometheus package (tools/setup-deps.sh)")
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    layers, index_head_dim = config["num_hidden_layers"], config["index_head_dim"]

    dashboards = sorted(os.path.join(args.dashboards, n) for n in os.listdir(args.dashboards) if n.endswith(".json"))
    queries = []
    uids = set()
    for path in dashboards:
        uid, qs = check_dashboard_structure(path)
        if uid in uids:
            raise Failure(f"{path}: dashboard uid {uid} used twice")
        uids.add(uid)
        queries += [(os.path.basename(path),) + q for q in qs]
    print(f"{len(dashboards)} dashboards, {len(queries)} queries")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="indexcache-dashboards-") as work:
        processes = []
        try:
            print("all-Full cluster")
            full = Cluster(args.indexcache, args.model, ["--index-pattern", "F" * layers], work, "cluster-all-full")
            processes.append(full)
            full.load(args.indexcache, 4)
            check_counters(full, "grpc", layers, 0, index_head_dim)
            full.stop(30)

            print("1/4 cluster (--index-freq 4)")
            # The TCP data plane here, gRPC above: both transports' metering runs.
            quarter = Cluster(args.indexcache, args.model,
                              ["--index-freq", "4", "--transport", "tcp", "--reuse-telemetry-rate", "1"], work,
                              "cluster-freq4", max_batch_tokens=256)
            processes.append(quarter)
            server, base = start_prometheus(args.prometheus, quarter, work)
            processes.append(server)
            quarter.load(args.indexcache, 6)
            # transformers' rule: layer i is Full iff max(i - offset + 1, 0) % freq == 0.
            shared = sum(1 for i in range(layers) if max(i - config.get("index_skip_topk_offset", 2) + 1, 0) % 4)
            check_counters(quarter, "tcp", layers - shared, shared, index_head_dim)
            wait_for_scrapes(base, 6)

            failed = []
            for board, panel, ref, expr in queries:
                for variable, replacement in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, replacement)
                answer = prometheus_query(base, expr)
                if answer.get("status") != "success":
                    failed.append(f"{board} / {panel} / {ref}: error {answer.get('error')}\n    {expr}")
                elif not answer["data"]["result"]:
                    failed.append(f"{board} / {panel} / {ref}: no series\n    {expr}")
            if failed:
                raise Failure("dashboard queries failed:\n  " + "\n  ".join(failed))
            print(f"every one of the {len(queries)} panel queries returned series "
                  f"({time.monotonic() - started:.1f} s)")
        finally:
            for p in reversed(processes):
                p.stop(30)


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
