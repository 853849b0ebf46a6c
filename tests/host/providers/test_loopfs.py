"""The loop file system helpers themselves: each type mounts, is the type asked for, and is cleaned up."""

from __future__ import annotations

import os
import subprocess

import pytest
from tests.support.loopfs import LoopFsUnavailable, loop_fs, unavailable_reason

from frieze.host.providers._fs import fs_type


@pytest.mark.parametrize("fstype", ["xfs", "btrfs", "ext4"])
def test_loop_fs_mounts_and_cleans_up(fstype: str) -> None:
    reason = unavailable_reason(fstype)
    if reason:
        pytest.skip(reason)
    try:
        with loop_fs(fstype) as fs:
            assert os.path.ismount(fs.mount)
            assert fs_type(str(fs.volume)) == fstype
            assert fs.volume.is_dir()
            (fs.volume / "x").write_bytes(b"data")
            # leave it frozen on purpose: teardown must thaw before unmounting
            subprocess.run(["fsfreeze", "-f", str(fs.mount)], check=True)
            mount, device, image = fs.mount, fs.device, fs.image
    except LoopFsUnavailable as e:
        pytest.skip(str(e))
    assert not os.path.ismount(mount)
    assert not image.exists()
    assert str(image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert device
