"""/var/run/wgagent: what the running daemon tells the other processes of its host.

The kernel holds routes and rules; what only the daemon knows (which peers it holds
idle, its status as of its last pass, that it runs at all) it writes here, and
`wgagent status`, the rpcd plugin (/usr/libexec/rpcd/wgagent) and the hotplug
scripts' helpers read it. One set of files per network namespace (named after the
namespace's inode), so that two daemons on one host (the demo's routers, the
tests' labs) never share one.

Written as root into a directory anybody may look at, so: a 0700 directory of ours,
a unique temporary name opened O_EXCL|O_NOFOLLOW (mkstemp), then rename(2), which
replaces a symlink at the destination instead of following it. A reader opens with
O_NOFOLLOW.
"""

from __future__ import annotations

import os
import stat

RUN_DIR = os.environ.get("WGAGENT_RUN_DIR", "/var/run/wgagent")


def netns_id() -> int:
    """The inode of this process's network namespace (what `readlink
    /proc/self/ns/net` prints as net:[N]): the plugin computes the same."""
    return os.stat("/proc/self/ns/net").st_ino


def path(kind: str, suffix: str = "") -> str:
    """RUN_DIR/<kind>-<netns><suffix>: idle-N.json, status-N.json, daemon-N.pid."""
    return os.path.join(RUN_DIR, f"{kind}-{netns_id()}{suffix}")


def private_dir(directory: str) -> str:
    """directory as a real directory of ours with mode 0700; OSError if something
    else stands there (a symlink, a file, a directory of another user)."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(f"{directory} is not a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)
    return directory


def write(target: str, text: str) -> None:
    """Replace target with text, atomically: a reader sees the old file or the new
    one, never a part. OSError when the directory is not ours or the write fails
    (nothing is left behind)."""
    directory = private_dir(os.path.dirname(target))
    # a unique name opened O_EXCL|O_NOFOLLOW; not tempfile.mkstemp, whose import
    # pulls in random and shutil, memory the daemon has no other use for
    tmp = os.path.join(directory, f".{os.path.basename(target)}-{os.getpid()}-{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def read(target: str) -> str:
    """The file's text; OSError when it is missing or a symlink."""
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd) as f:
        return f.read()


def remove(target: str) -> None:
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass


# --- the daemon's identity: pid and start time, so that a pid the kernel gave to
# another process after a crash is never taken for the daemon (nor signalled)


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None when no such process.
    The comm field may hold spaces and parentheses: fields are counted after its
    last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def identity() -> str:
    """This process as the pid file says it: "PID STARTTIME"."""
    return f"{os.getpid()} {start_time(os.getpid())}\n"


def running_pid() -> int | None:
    """The pid of the daemon of this network namespace, if it runs: its pid file
    names a live process with the start time it had when it wrote it."""
    try:
        pid_text, start_text = read(path("daemon", ".pid")).split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if str(start_time(pid)) == start_text else None
