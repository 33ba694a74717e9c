#!/usr/bin/env python3
"""A fleet on one machine: real `ferry run` agents and simulated pollers
against one static TUF repository served by nginx, nudged through
mosquitto. Used by integration/bench/fleet.sh; prints what it measured.

    sim.py --ferry BIN --py VENV_PYTHON [--agents N] [--simulated M]
           [--git-agents G] [--rounds K] [--poll SECS] [--window SECS]
           [--work DIR]

1. Setup: a python-tuf repository (integration/tuf/repo.py) with one file
   target, a manifest and the update policy; nginx serves it; N agents
   (own state directory, files root and machine id; `[fleet]` on
   mosquitto) apply the first release.
2. Nudged releases: K times, publish a release, send one nudge on
   ferry/nudge/all (images/fleet/tuf-publish-nudge), and time each
   device from the nudge to its file holding the new content.
3. Idle: M simulated devices poll as the agent does when nothing changed
   (one conditional GET for metadata/timestamp.json, ETag and
   Last-Modified of the last answer, one keep-alive connection each),
   beside the N agents, for WINDOW seconds at POLL seconds apart:
   requests/s, bytes per idle poll, nginx CPU, the agents' CPU.
4. Waves: releases with `[rollout] percent` 5, 25, 100, each nudged;
   the time until every device of the wave holds it, and that no device
   outside the wave does.
5. Git: G more agents pull SSH-signed commits over smart HTTP (the real
   `git http-backend` behind integration/git/http_backend.py); the bare
   repository's post-receive hook (images/fleet/post-receive) nudges them.
   K pushes, each timed from `git push` to every git agent holding it.
"""

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, what: str) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime stime cutime cstime (fields 14-17 of stat; here from index 11).
    return sum(int(x) for x in fields[11:15])


def bucket(machine_id: str) -> int:
    d = hashlib.sha256(b"ferry-rollout\0" + machine_id.strip().encode()).digest()
    return int.from_bytes(d[:2], "big") % 100


class Fleet:
    def __init__(self, a):
        self.a = a
        self.work = a.work or tempfile.mkdtemp(prefix="ferry-fleet-")
        self.procs = []
        self.repo = os.path.join(self.work, "tuf")
        self.version = 0

    def run(self, *args):
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)

    def publish(self, content: str, percent: int = 100) -> None:
        src = os.path.join(self.work, "src")
        shutil.rmtree(src, ignore_errors=True)
        os.makedirs(os.path.join(src, "files"))
        os.makedirs(os.path.join(src, "ferry"))
        with open(os.path.join(src, "files/app.conf"), "w") as f:
            f.write(content)
        with open(os.path.join(src, "ferry/manifest.yaml"), "w") as f:
            f.write("apiVersion: ferry.dev/v1\nresources:\n"
                    "  - {kind: file, path: /etc/app.conf, source: files/app.conf}\n")
        with open(os.path.join(src, "ferry/policy.toml"), "w") as f:
            f.write(f"[rollout]\npercent = {percent}\n")
        if self.version == 0:
            self.run(self.a.py, f"{ROOT}/integration/tuf/repo.py", "init", self.repo)
        self.run(self.a.py, f"{ROOT}/integration/tuf/repo.py", "tree", self.repo, src)
        self.version += 1

    def start_servers(self) -> None:
        self.web_port = free_port()
        d = os.path.join(self.work, "nginx")
        os.makedirs(d)
        conf = f"""daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
  log_format t '$msec $request_uri $status $bytes_sent $request_length';
  access_log {d}/access.log t;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000; keepalive_timeout 120s;
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{self.web_port}; root {self.repo}; }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        self.access_log = os.path.join(d, "access.log")
        self.nginx = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d],
                                      stderr=subprocess.DEVNULL)
        self.procs.append(self.nginx)
        wait_port(self.web_port, "nginx")
        self.mq_port = free_port()
        mconf = os.path.join(self.work, "mosquitto.conf")
        with open(mconf, "w") as f:
            user = "user root\n" if os.getuid() == 0 else ""
            f.write(f"{user}listener {self.mq_port} 127.0.0.1\nallow_anonymous true\n"
                    "persistence false\nmax_queued_messages 0\nlog_dest none\n")
        self.procs.append(subprocess.Popen(["mosquitto", "-c", mconf],
                                           stderr=subprocess.DEVNULL))
        wait_port(self.mq_port, "mosquitto")

    def start_agents(self) -> None:
        url = f"http://127.0.0.1:{self.web_port}"
        self.agents = []
        for i in range(self.a.agents):
            d = os.path.join(self.work, f"agent-{i:04}")
            os.makedirs(os.path.join(d, "root"))
            mid = "%032x" % random.getrandbits(128)
            with open(os.path.join(d, "machine-id"), "w") as f:
                f.write(mid + "\n")
            p = self.start_agent(d, f"""[source]
kind = "tuf"
[source.tuf]
metadata_url = "{url}/metadata"
targets_url = "{url}/targets"
root = "{self.repo}/metadata/1.root.json"
""", f"""poll_interval = "{self.a.poll}s"
jitter = "{self.a.poll}s"
machine_id_file = "{d}/machine-id"
""", f"dev-{i:04}")
            self.agents.append((d, bucket(mid), p))
            if i % 10 == 9:
                time.sleep(0.5)

    def start_agent(self, d: str, source: str, agent: str, device_id: str):
        """`ferry run` in directory `d` with `source` and `agent` settings
        (TOML), files under d/root, nudged through the broker."""
        with open(os.path.join(d, "ferry.toml"), "w") as f:
            f.write(f"""state_dir = "{d}/state"
{source}[files]
root = "{d}/root"
[agent]
{agent}control_socket = "{d}/ferry.sock"
[fleet]
broker = "mqtt://127.0.0.1:{self.mq_port}"
device_id = "{device_id}"
nudge_interval = "1s"
report_interval = "10m"
""")
        p = subprocess.Popen([self.a.ferry, "--config", f"{d}/ferry.toml", "run"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def contents(self, agents=None):
        out = []
        for d, _, _ in (self.agents if agents is None else agents):
            try:
                with open(os.path.join(d, "root/etc/app.conf")) as f:
                    out.append(f.read())
            except OSError:
                out.append(None)
        return out

    def wait_all(self, want, within=120.0, who=None, agents=None):
        """Seconds from now until every device in `who` holds `want`."""
        agents = self.agents if agents is None else agents
        who = set(range(len(agents))) if who is None else set(who)
        seen = {}
        t0 = time.monotonic()
        while len(seen) < len(who):
            now = time.monotonic()
            if now - t0 > within:
                missing = sorted(who - set(seen))
                sys.exit(f"devices {missing[:10]}… never got {want!r}")
            for i, c in enumerate(self.contents(agents)):
                if i in who and i not in seen and c == want:
                    seen[i] = now - t0
            time.sleep(0.002)
        return seen

    def git(self, *args, cwd=None):
        env = dict(os.environ, HOME=self.work, GIT_CONFIG_NOSYSTEM="1")
        subprocess.run(["git", *args], cwd=cwd or self.gwork, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_git(self) -> None:
        """A signed git repository served over smart HTTP, with the
        post-receive hook that nudges, and G agents pulling it."""
        g = os.path.join(self.work, "git")
        self.gwork = os.path.join(g, "work")
        trust = os.path.join(g, "trust")
        bare = os.path.join(g, "srv", "fleet.git")
        os.makedirs(trust)
        os.makedirs(os.path.join(self.gwork, "files"))
        key = os.path.join(g, "admin")
        self.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "admin@example", "-f", key)
        with open(key + ".pub") as f, open(os.path.join(trust, "allowed_signers"), "w") as out:
            out.write("admin@example " + f.read())
        self.git("init", "-q", "--bare", "-b", "main", bare, cwd=g)
        hook = os.path.join(bare, "hooks", "post-receive")
        shutil.copy(f"{ROOT}/images/fleet/post-receive", hook)
        os.chmod(hook, 0o755)
        self.git("config", "ferry.mqttHost", "127.0.0.1", cwd=bare)
        self.git("config", "ferry.mqttPort", str(self.mq_port), cwd=bare)
        self.git("init", "-q", "-b", "main")
        for k, v in [("user.name", "admin"), ("user.email", "admin@example"), ("gpg.format", "ssh"),
                     ("user.signingkey", key), ("commit.gpgsign", "true")]:
            self.git("config", k, v)
        self.git("remote", "add", "origin", bare)
        with open(os.path.join(self.gwork, "ferry.yaml"), "w") as f:
            f.write("apiVersion: ferry.dev/v1\nresources:\n"
                    "  - {kind: file, path: /etc/app.conf, source: files/app.conf}\n")
        self.git_commit("git release 0\n")
        first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.gwork, check=True,
                               capture_output=True, text=True).stdout.strip()
        portfile = os.path.join(g, "port")
        self.procs.append(subprocess.Popen([sys.executable, f"{ROOT}/integration/git/http_backend.py",
                                            os.path.join(g, "srv"), portfile]))
        for _ in range(200):
            if os.path.exists(portfile):
                break
            time.sleep(0.05)
        with open(portfile) as f:
            port = int(f.read())
        self.git_agents = []
        for i in range(self.a.git_agents):
            d = os.path.join(self.work, f"git-agent-{i:04}")
            os.makedirs(os.path.join(d, "root"))
            p = self.start_agent(d, f"""[source]
kind = "git"
[source.git]
url = "http://127.0.0.1:{port}/fleet.git"
trust_dir = "{trust}"
pin = "{first}"
""", f"""poll_interval = "{self.a.poll * 6}s"
jitter = "0s"
""", f"git-{i:04}")
            self.git_agents.append((d, 0, p))

    def git_commit(self, content: str) -> None:
        with open(os.path.join(self.gwork, "files", "app.conf"), "w") as f:
            f.write(content)
        self.git("add", "-A")
        self.git("commit", "-q", "-S", "-m", content.strip())
        self.git("push", "-q", "origin", "main")

    def nudge(self):
        env = dict(os.environ, FERRY_MQTT_HOST="127.0.0.1", FERRY_MQTT_PORT=str(self.mq_port))
        subprocess.run([f"{ROOT}/images/fleet/tuf-publish-nudge"], env=env, check=True,
                       stdout=subprocess.DEVNULL)

    def stop(self):
        for p in self.procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


async def poller(port: int, period: float, stop: float, stats: dict) -> None:
    """One simulated device: a conditional GET of timestamp.json every
    `period` seconds over one keep-alive connection."""
    await asyncio.sleep(random.random() * period)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    etag = None
    while time.monotonic() < stop:
        cond = f"If-None-Match: {etag}\r\n" if etag else ""
        writer.write((f"GET /metadata/timestamp.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"User-Agent: ferry/sim\r\n{cond}\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            k, _, v = line.partition(b":")
            if k.lower() == b"content-length":
                length = int(v)
            elif k.lower() == b"etag":
                etag = v.strip().decode()
        if length:
            await reader.readexactly(length)
        stats["polls"] += 1
        await asyncio.sleep(period)
    writer.close()


def idle_window(fleet: Fleet, a) -> None:
    with open(fleet.access_log) as f:
        start_lines = sum(1 for _ in f)
    agent_cpu0 = sum(cpu_ticks(p.pid) for _, _, p in fleet.agents)
    nginx0 = cpu_ticks(fleet.nginx.pid)
    t0 = time.monotonic()
    stats = {"polls": 0}

    async def main():
        stop = time.monotonic() + a.window
        await asyncio.gather(*(poller(fleet.web_port, a.poll, stop, stats)
                               for _ in range(a.simulated)))

    asyncio.run(main())
    elapsed = time.monotonic() - t0
    hz = os.sysconf("SC_CLK_TCK")
    agent_cpu = (sum(cpu_ticks(p.pid) for _, _, p in fleet.agents) - agent_cpu0) / hz
    nginx_cpu = (cpu_ticks(fleet.nginx.pid) - nginx0) / hz
    with open(fleet.access_log) as f:
        lines = f.read().splitlines()[start_lines:]
    reqs = [l.split() for l in lines]
    ts = [r for r in reqs if r[1] == "/metadata/timestamp.json"]
    not_mod = [r for r in ts if r[2] == "304"]
    per_poll = statistics.mean(int(r[3]) + int(r[4]) for r in not_mod) if not_mod else 0
    other = len(reqs) - len(ts)
    agent_polls = len(ts) - stats["polls"]
    print(f"idle, {a.agents} agents + {a.simulated} simulated, polling every {a.poll} s (jitter {a.poll} s), {elapsed:.0f} s window:")
    print(f"  requests/s at nginx          : {len(reqs) / elapsed:8.1f}  ({len(ts)} timestamp.json, {len(not_mod)} answered 304, {other} other)")
    print(f"  bytes per idle poll          : {per_poll:8.0f}  (request + response, headers included; goal < 1024)")
    print(f"  nginx CPU                    : {100 * nginx_cpu / elapsed:8.2f} %  ({1000 * nginx_cpu / max(len(reqs), 1):.3f} ms per request)")
    if agent_polls > 0:
        print(f"  agents' CPU per idle poll    : {1000 * agent_cpu / agent_polls:8.2f} ms  ({agent_polls} polls by the real agents)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ferry", required=True)
    p.add_argument("--py", required=True)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--simulated", type=int, default=900)
    p.add_argument("--git-agents", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--poll", type=int, default=10)
    p.add_argument("--window", type=int, default=30)
    p.add_argument("--work")
    a = p.parse_args()
    fleet = Fleet(a)
    try:
        fleet.publish("release 0\n")
        fleet.start_servers()
        t = time.monotonic()
        fleet.start_agents()
        fleet.wait_all("release 0\n", within=300)
        print(f"{a.agents} agents started and applied the first release in {time.monotonic() - t:.1f} s")
        time.sleep(2)

        lat = []
        for r in range(1, a.rounds + 1):
            want = f"release {r}\n"
            fleet.publish(want)
            fleet.nudge()
            lat += fleet.wait_all(want).values()
            time.sleep(1.5)
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(f"release → nudge → applied, {a.agents} agents × {a.rounds} releases ({len(lat)} samples):")
        print(f"  median {1000 * statistics.median(lat):7.0f} ms   P99 {1000 * p99:7.0f} ms   max {1000 * lat[-1]:7.0f} ms   (goal: P99 < 1000 ms; seed: 8–12 s per target)")

        time.sleep(a.poll * 2 + 2)  # every agent settles and polls conditionally
        idle_window(fleet, a)

        print("rollout waves (signed policy), nudged:")
        n = a.rounds + 1
        for percent in (5, 25, 100):
            want = f"release {n} (wave)\n"
            fleet.publish(want, percent)
            fleet.nudge()
            wave = [i for i, (_, b, _) in enumerate(fleet.agents) if b < percent]
            seen = fleet.wait_all(want, who=wave)
            took = max(seen.values(), default=0.0)
            time.sleep(1.0)
            outside = [i for i, c in enumerate(fleet.contents()) if c == want and i not in wave]
            if outside:
                sys.exit(f"devices outside the {percent}% wave applied: {outside[:10]}")
            print(f"  {percent:3d} %: {len(wave):4d} devices converged {1000 * took:6.0f} ms after the nudge; "
                  f"none outside the wave")

        if a.git_agents:
            fleet.start_git()
            fleet.wait_all("git release 0\n", within=300, agents=fleet.git_agents)
            time.sleep(2)
            glat = []
            for r in range(1, a.rounds + 1):
                want = f"git release {r}\n"
                t0 = time.monotonic()
                fleet.git_commit(want)  # the push's post-receive hook nudges
                pushed = time.monotonic() - t0
                glat += [pushed + t for t in fleet.wait_all(want, agents=fleet.git_agents).values()]
                time.sleep(1.5)
            glat.sort()
            p99 = glat[min(len(glat) - 1, int(0.99 * len(glat)))]
            print(f"git push → post-receive nudge → applied, {a.git_agents} agents over smart HTTP × {a.rounds} pushes:")
            print(f"  median {1000 * statistics.median(glat):7.0f} ms   P99 {1000 * p99:7.0f} ms   max {1000 * glat[-1]:7.0f} ms   (timed from the start of `git push`)")
    finally:
        fleet.stop()
        if not a.work:
            shutil.rmtree(fleet.work, ignore_errors=True)


if __name__ == "__main__":
    main()
