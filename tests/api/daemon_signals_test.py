#!/usr/bin/python3
"""A spawned iopfd: SIGHUP with a good config (applied), with a bad one (refused, old config stays),
iopfctl's exit codes, SIGTERM drains and exits 0.

usage: daemon_signals_test.py IOPFD IOPFCTL
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BASE = """listen: ["unix:{sock}"]
backends:
  - name: mem
    type: memory
    devices:
      - {{name: nic0, handle: 3, rid: 0x0300, pasid_bits: 8}}
domains:
  - name: host
    chain: [{{name: success}}]
{extra}attachments:
  - {{device: nic0, domain: host}}
"""


def wait_for(predicate, what, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit("timed out waiting for " + what)


def main():
    iopfd, iopfctl = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="iopf-sig-")
    sock = os.path.join(tmp, "run", "iopfd.sock")
    cfg = os.path.join(tmp, "iopfd.yaml")
    log = open(os.path.join(tmp, "iopfd.log"), "w+")

    def ctl(*args):
        return subprocess.run([iopfctl, "--connect", "unix:" + sock, "--json"] + list(args),
                              capture_output=True, text=True, timeout=30)

    def domains():
        r = ctl("domains")
        assert r.returncode == 0, r.stderr
        return [d["name"] for d in json.loads(r.stdout).get("domains", [])]

    # Unreachable daemon: exit code 3.
    r = ctl("status")
    assert r.returncode == 3, (r.returncode, r.stderr)
    with open(cfg, "w") as f:
        f.write(BASE.format(sock=sock, extra=""))
    daemon = subprocess.Popen([iopfd, "--config", cfg], stderr=log)
    try:
        wait_for(lambda: os.path.exists(sock), "the socket")
        wait_for(lambda: ctl("health").returncode == 0, "SERVING")
        assert domains() == ["host"], domains()
        # A refused request: exit code 1.
        r = ctl("respond", "424242", "success")
        assert r.returncode == 1 and "request refused" in r.stderr, (r.returncode, r.stderr)

        # Good reload: a second domain appears, the generation moves.
        with open(cfg, "w") as f:
            f.write(BASE.format(sock=sock, extra="  - name: guest\n    kind: nested\n    chain: [{name: invalid}]\n"))
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: domains() == ["host", "guest"], "the reloaded domain")
        info = json.loads(ctl("status").stdout)["info"]
        assert int(info["config_generation"]) == 2, info

        # Bad reload: refused, the old config stays.
        with open(cfg, "w") as f:
            f.write(BASE.format(sock=sock, extra="  - name: broken\n    kind: pagin\n"))
        daemon.send_signal(signal.SIGHUP)

        def refused():
            log.flush()
            with open(log.name) as f:
                return "reload refused" in f.read()
        wait_for(refused, "the refusal")
        with open(log.name) as f:
            text = f.read()
        assert "iopfd.yaml:11: domains[1].kind: 'pagin' is not one of paging, nested, sva" in text, text
        assert domains() == ["host", "guest"], domains()
        assert int(json.loads(ctl("status").stdout)["info"]["config_generation"]) == 2

        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=30)
        assert rc == 0, rc
        assert not os.path.exists(sock), "the socket is removed on exit"
        print("daemon signals: 1 passed, 0 failed")
    finally:
        if daemon.poll() is None:
            daemon.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
