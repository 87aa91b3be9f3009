#!/usr/bin/python3
"""iopfd with a qemu_socket backend from its config: a VMM (iopf-vmm-peer) connects, adds two
devices (attached to the configured domain on DEVICE_ADD) and gets every group answered by the
domain's chain; a config without options.socket is refused naming the field.

usage: daemon_qemu_socket_test.py IOPFD IOPFCTL IOPF_VMM_PEER
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def main():
    iopfd, iopfctl, peer = sys.argv[1:4]
    tmp = tempfile.mkdtemp(prefix="iopf-qs-")
    api = os.path.join(tmp, "api.sock")
    cfg = os.path.join(tmp, "iopfd.yaml")
    with open(cfg, "w") as f:
        f.write('listen: ["unix:%s"]\nbackends:\n  - name: vmm\n    type: qemu_socket\n'
                '    options: {socket: vmm.sock, domain: guest}\n'
                'domains:\n  - name: guest\n    kind: nested\n    chain: [{name: success}]\n' % api)
    bad = os.path.join(tmp, "bad.yaml")
    with open(bad, "w") as f:
        f.write('backends:\n  - name: vmm\n    type: qemu_socket\n    options: {domain: guest}\n')
    r = subprocess.run([iopfd, "--check-config", bad], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "backends[0].options.socket: a qemu_socket backend needs a socket path" in r.stderr, r.stderr

    log = open(os.path.join(tmp, "iopfd.log"), "w+")
    daemon = subprocess.Popen([iopfd, "--config", cfg], stderr=log)

    def ctl(*args):
        return subprocess.run([iopfctl, "--connect", "unix:" + api, "--json"] + list(args),
                              capture_output=True, text=True, timeout=30)
    try:
        deadline = time.time() + 30
        while ctl("health").returncode != 0:
            assert time.time() < deadline, "iopfd never became SERVING"
            time.sleep(0.05)
        vmm_sock = os.path.join(tmp, "vmm.sock")
        assert os.path.exists(vmm_sock)
        r = subprocess.run([peer, "--socket", vmm_sock, "--devices", "2", "--groups", "2000", "--keep-devices",
                            "--json"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["responses"] == 2000 and out["success"] == 2000, out
        status = json.loads(ctl("status").stdout)
        backend = status["info"]["backend_status"][0]
        assert backend["name"] == "vmm" and backend["type"] == "qemu_socket" and backend["up"], backend
        doms = {d["name"]: d for d in status["stats"]["domains"]}
        assert int(doms["guest"]["groups"]) == 2000, doms
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        print("qemu_socket backend from the config: 2000 groups answered through the configured domain")
    finally:
        if daemon.poll() is None:
            daemon.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
