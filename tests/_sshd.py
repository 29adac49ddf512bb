"""A real OpenSSH server on the loopback for the ssh:// device tests: Debian's sshd (openssh-server,
tools/setup_system.sh) started as `sshd -D -f CONFIG` on a free 127.0.0.1 port by the current
user, with a throwaway host key and a throwaway client key, key-only authentication.
The client side is the system `ssh`/`scp` given `-F CONFIG` through $DEPLOYKIT_SSH_OPTIONS, the
way a user points deploykit at their own ssh config. That config multiplexes connections
(ControlMaster, as many users' configs do): a test's dozens of ssh/scp calls then share one
handshake instead of paying ~1 s each on a loaded 2-core CI machine; every call still goes
through the real sshd (a killed session kills its channels, a stopped server refuses new ones
once the master is closed, which the fixture does on exit)."""

from __future__ import annotations

import getpass
import os
import socket
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@contextmanager
def sshd(tmp: Path):
    """Yields (url, ssh client config path); the server stops on exit."""
    if not Path(SSHD).exists():
        raise RuntimeError(f"{SSHD} not installed: run tools/setup_system.sh (openssh-server)")
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o700)
    host_key, user_key = tmp / "host_ed25519", tmp / "id_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    auth = tmp / "authorized_keys"
    auth.write_text(Path(f"{user_key}.pub").read_text())
    auth.chmod(0o600)
    port = _free_port()
    user = getpass.getuser()
    conf = tmp / "sshd_config"
    conf.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {tmp / 'sshd.pid'}
AuthorizedKeysFile {auth}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers {user}
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    known = tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text()}")
    client = tmp / "ssh_config"
    # a short folder for the control socket: a unix socket path has a ~104-byte limit
    mux = Path(tempfile.mkdtemp(prefix="dk-ssh-"))
    client.write_text(f"""Host 127.0.0.1
  IdentityFile {user_key}
  IdentitiesOnly yes
  UserKnownHostsFile {known}
  StrictHostKeyChecking yes
  LogLevel ERROR
  ControlMaster auto
  ControlPath {mux}/%C
  ControlPersist 30
""")
    log = tmp / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {log.read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("sshd did not listen within 20 s") from None
                time.sleep(0.1)
        yield f"ssh://{user}@127.0.0.1:{port}", client, proc
    finally:
        # close the shared connection first: its session would outlive the listener
        subprocess.run(["ssh", "-F", str(client), "-p", str(port), "-O", "exit",
                        f"{user}@127.0.0.1"], capture_output=True, timeout=10)
        shutil.rmtree(mux, ignore_errors=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def ssh_device(tmp: Path):
    """`sshd(tmp)` with deploykit pointed at it (DEPLOYKIT_SSH_OPTIONS = its client config, the
    previous value restored after); yields the `ssh://` URL."""
    with sshd(tmp) as (url, client, _):
        old = os.environ.get("DEPLOYKIT_SSH_OPTIONS")
        os.environ["DEPLOYKIT_SSH_OPTIONS"] = f"-F {client}"
        try:
            yield url
        finally:
            if old is None:
                os.environ.pop("DEPLOYKIT_SSH_OPTIONS")
            else:
                os.environ["DEPLOYKIT_SSH_OPTIONS"] = old
