#!/usr/bin/python3
"""A spawned iopfd with 10,240 open page request groups gets SIGTERM: every one of them is answered
(INVALID, origin shutdown) exactly once, the simulated devices see no bogus or duplicate response,
and the daemon exits 0.

The simulated backend runs 20 devices x 512 PRI credits against a domain whose chain holds every
group (sim_hold, 60 s deadline): once the credits are gone the devices stop, so the open count is
exactly 10,240 and stays there until the drain.

usage: drain_spawned_test.py IOPFD IOPFCTL
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DEVICES, CREDITS = 20, 512
SCENARIO = {
    "name": "drain-10k",
    "description": "every group held until the daemon drains",
    "seed": 7,
    "duration_ms": 600000,
    "domains": [{"name": "held", "kind": "paging", "deadline_ms": 60000, "chain": [{"name": "sim_hold"}]}],
    "devices": [{
        "name": "dev", "count": DEVICES, "rid": "05:00.0", "pri_allocation": CREDITS,
        "workload": {"kind": "uniform", "base": "0x100000", "size": "64MiB", "write_ratio": 0.5,
                     "group_size": {"min": 1, "max": 1}, "rate_groups_per_s": 200000},
    }],
    "attachments": [{"device": "dev*", "domain": "held"}],
}


def main():
    iopfd, iopfctl = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="iopf-drain-")
    sock = os.path.join(tmp, "iopfd.sock")
    with open(os.path.join(tmp, "drain.json"), "w") as f:
        json.dump(SCENARIO, f)
    cfg = os.path.join(tmp, "iopfd.yaml")
    with open(cfg, "w") as f:
        f.write('listen: ["unix:%s"]\nbackends:\n  - {name: sim, type: simulated, scenario: drain.json}\n' % sock)
    log_path = os.path.join(tmp, "iopfd.log")
    log = open(log_path, "w+")

    def status():
        r = subprocess.run([iopfctl, "--connect", "unix:" + sock, "--json", "stats"],
                           capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 else None

    daemon = subprocess.Popen([iopfd, "--config", cfg], stderr=log)
    try:
        want = DEVICES * CREDITS
        deadline = time.time() + 60
        open_groups = 0
        while time.time() < deadline:
            s = status()
            if s is not None:
                open_groups = int(s.get("open_groups", 0))
                if open_groups >= want:
                    break
            time.sleep(0.1)
        assert open_groups == want, "expected %d open groups, saw %d" % (want, open_groups)
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=60)
        log.flush()
        with open(log_path) as f:
            text = f.read()
        assert rc == 0, (rc, text)
        m = re.search(r"drained: (\d+) groups answered INVALID at shutdown, (\d+) answered in all, (\d+) open", text)
        assert m, text
        at_shutdown, total, still_open = map(int, m.groups())
        assert at_shutdown == want, (at_shutdown, want, text)
        assert total == want, (total, want, text)  # nothing else answered: held groups only
        assert still_open == 0, text
        assert "ROUTER BUG" not in text, text
        print("drain of %d open groups: every one answered once (origin shutdown)" % want)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
