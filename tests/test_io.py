"""genbound.io: folders replaced whole under concurrent writers, kills and errors, with the
permissions the umask gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import genbound.io as gio
from genbound.errors import GenboundError
from genbound.io import atomic_directory, remove_leftovers, save_tensors

FILES = ("a.txt", "b.txt", "sub/c.txt")

# A writer in its own process: writes ``count`` versions "TAG I" of ``dest``; ``stop``
# makes it wait to be killed at one point of the last write.
WRITER = r"""
import json, os, sys, time
from pathlib import Path
import genbound.io as gio

args = json.loads(sys.argv[1])
dest, stop = Path(args["dest"]), args.get("stop")


def wait_to_be_killed(*_):
    Path(args["signal"]).touch()
    time.sleep(600)
    raise SystemExit("not killed")


if args.get("aside"):  # as on a system that cannot swap two folders in one step
    gio._exchange = lambda a, b: False
if stop == "before_delete":
    gio._remove_tree = wait_to_be_killed
if stop == "between_renames":
    rename = os.rename

    def paused_rename(src, dst):
        rename(src, dst)
        if ".old-" in os.fspath(dst):
            wait_to_be_killed()

    gio.os.rename = paused_rename
if args.get("go"):
    Path(args["ready"]).touch()
    while not os.path.exists(args["go"]):
        time.sleep(0.001)
for i in range(args["count"]):
    with gio.atomic_directory(dest) as tmp:
        (tmp / "sub").mkdir()
        for n, name in enumerate(args["files"]):
            (tmp / name).write_text(f"{args['tag']} {i}")
            if stop == "filling" and n == 0:
                wait_to_be_killed()
"""


def _start_writer(**args) -> subprocess.Popen:
    args = {
        "files": FILES,
        "count": 1,
        **{k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
    }
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _write(dest: Path, text: str) -> None:
    with atomic_directory(dest) as tmp:
        (tmp / "sub").mkdir()
        for name in FILES:
            (tmp / name).write_text(text)


def _version(dest: Path) -> str:
    """The one version every file of ``dest`` holds (fails if ``dest`` is incomplete or
    mixes versions)."""
    names = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert names == sorted(FILES), f"{dest} holds {names}"
    texts = {(dest / name).read_text() for name in FILES}
    assert len(texts) == 1, f"{dest} mixes versions {texts}"
    return texts.pop()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"writer exited early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.005)


def _swap_supported(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return gio._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


@pytest.fixture(params=["swap", "aside"])
def mode(request, tmp_path, monkeypatch):
    """Replacement by a one-step swap (Linux) or by renaming the old folder aside."""
    if request.param == "swap" and not _swap_supported(tmp_path):
        pytest.skip("this file system cannot swap two folders in one step")
    if request.param == "aside":
        monkeypatch.setattr(gio, "_exchange", lambda a, b: False)
    return request.param


@pytest.mark.parametrize("aside", [False, True], ids=["swap", "aside"])
def test_two_processes_writing_the_same_folder(tmp_path, aside):
    dest, count = tmp_path / "out" / "report", 300
    procs = [
        _start_writer(
            dest=dest,
            tag=tag,
            count=count,
            go=tmp_path / "go",
            ready=tmp_path / f"ready-{tag}",
            aside=aside,
        )
        for tag in ("first", "second")
    ]
    for tag, proc in zip(("first", "second"), procs, strict=True):
        _wait_for(tmp_path / f"ready-{tag}", proc)
    (tmp_path / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert err == ""
    tag, i = _version(dest).split()  # complete, and one writer's last version
    assert tag in ("first", "second") and int(i) == count - 1
    assert os.listdir(dest.parent) == ["report"]  # no temporary folder or lock left


def test_readers_never_see_the_folder_missing_or_partial(tmp_path):
    """With a one-step swap a reader always finds ``dest``, and a listing of the folder that
    stayed at ``dest`` throughout is complete (a reader that opened the old folder before
    the swap may see it being deleted)."""
    if not _swap_supported(tmp_path):
        pytest.skip("this file system cannot swap two folders in one step")
    dest = tmp_path / "report"
    _write(dest, "v -1")
    done, complete, partial, errors = threading.Event(), [], [], []

    def read():
        while not done.is_set():
            try:
                fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                errors.append(exc)
                continue
            try:
                names = sorted(os.listdir(fd))
                if os.path.samestat(os.fstat(fd), os.stat(dest)):
                    (complete if names == ["a.txt", "b.txt", "sub"] else partial).append(names)
            finally:
                os.close(fd)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(200):
            _write(dest, f"v {i}")
    finally:
        done.set()
        reader.join()
    assert errors == [] and partial == []
    assert len(complete) > 0
    assert _version(dest) == "v 199"


@pytest.mark.parametrize("stop", ["filling", "before_delete"])
def test_killed_writer_leaves_a_complete_folder_and_is_cleaned_up(tmp_path, mode, stop):
    parent = tmp_path / "out"
    dest = parent / "report"
    _write(dest, "old 0")
    proc = _start_writer(
        dest=dest, tag="new", stop=stop, signal=tmp_path / "signal", aside=mode == "aside"
    )
    _wait_for(tmp_path / "signal", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert _version(dest) == ("old 0" if stop == "filling" else "new 0")
    left = set(os.listdir(parent)) - {"report"}
    assert left and all(name.startswith(".report.") for name in left)  # hidden leftovers
    _write(dest, "next 0")
    assert _version(dest) == "next 0"
    assert os.listdir(parent) == ["report"]


def test_writer_killed_between_renames_leaves_the_old_folder_restorable(tmp_path):
    parent = tmp_path / "out"
    dest = parent / "report"
    _write(dest, "old 0")
    proc = _start_writer(
        dest=dest, tag="new", stop="between_renames", signal=tmp_path / "signal", aside=True
    )
    _wait_for(tmp_path / "signal", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not dest.exists()  # the one moment the aside strategy leaves it absent
    remove_leftovers(parent)
    assert _version(dest) == "old 0"  # the old folder is put back whole
    _write(dest, "next 0")
    assert _version(dest) == "next 0"
    assert os.listdir(parent) == ["report"]


def test_only_folders_of_finished_processes_on_this_host_are_removed(tmp_path):
    dest = tmp_path / "report"
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(finished.stdout)
    ours = gio._private_name(dest, "tmp")
    dead = tmp_path / ours.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    elsewhere = tmp_path / ours.name.replace(f"-{gio._host_tag()}-", "-0badf00d-").replace(
        f"-{os.getpid()}-", f"-{dead_pid}-"
    )
    unrelated = tmp_path / ".report.tmp-notours"
    for d in (ours, dead, elsewhere, unrelated):
        d.mkdir()
        (d / "x").write_text("x")
    remove_leftovers(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([ours.name, elsewhere.name, unrelated.name])


def test_error_in_block_leaves_dest_untouched(tmp_path, mode):
    dest = tmp_path / "report"
    with pytest.raises(ValueError, match="boom"), atomic_directory(tmp_path / "new") as tmp:
        (tmp / "a.txt").write_text("x")
        raise ValueError("boom")
    assert os.listdir(tmp_path) == []
    _write(dest, "old 0")
    with pytest.raises(KeyboardInterrupt), atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("x")
        raise KeyboardInterrupt
    assert _version(dest) == "old 0"
    assert os.listdir(tmp_path) == ["report"]


def test_replacing_works_in_both_modes(tmp_path, mode):
    dest = tmp_path / "deep" / "report"
    for i in range(3):
        _write(dest, f"v {i}")
        assert _version(dest) == f"v {i}"
    assert os.listdir(dest.parent) == ["report"]


def test_a_file_at_dest_is_refused_before_the_work(tmp_path):
    (tmp_path / "file").write_text("keep")
    ran = []
    with pytest.raises(GenboundError, match="found a file"), atomic_directory(tmp_path / "file"):
        ran.append(True)
    assert ran == [] and (tmp_path / "file").read_text() == "keep"


def test_a_link_at_dest_has_its_folder_replaced(tmp_path):
    _write(tmp_path / "runs" / "first", "old 0")
    (tmp_path / "latest").symlink_to(tmp_path / "runs" / "first", target_is_directory=True)
    _write(tmp_path / "latest", "new 0")
    assert (tmp_path / "latest").is_symlink()
    assert _version(tmp_path / "runs" / "first") == "new 0"
    assert os.listdir(tmp_path / "runs") == ["first"]


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_modes_follow_the_umask(tmp_path, umask):
    assert gio.current_umask() == umask
    dest = tmp_path / "report"
    for _ in range(2):  # created, then replaced
        with atomic_directory(dest) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "a.txt").write_text("x")
            save_tensors({"w": torch.zeros(2)}, tmp / "t.safetensors")
        assert _mode(dest) == _mode(dest / "sub") == 0o777 & ~umask
        assert _mode(dest / "a.txt") == _mode(dest / "t.safetensors") == 0o666 & ~umask


def test_run_folder_modes_follow_the_umask(tmp_path, umask):
    from genbound.checkpoint import write_run

    manifest = {
        "variant": "lora",
        "updates": {"x": {"shape": [4, 3], "link": {"kind": "lowrank", "B": "B", "A": "A"}}},
    }
    run = write_run(tmp_path / "run", manifest, {"B": torch.ones(4, 2), "A": torch.ones(2, 3)})
    assert _mode(run) == 0o777 & ~umask
    assert {_mode(p) for p in run.iterdir()} == {0o666 & ~umask}
