"""Where a target stages an incoming image: beside the guests' images (one filesystem, so moving an image in
and out of the staging area is a rename), yet out of reach of the guest recovery's leftover sweep.

The bug this pins (found by the fault matrix, cell `kill-dst-fs@unconfirmed`): with `HOME/guests` on a
filesystem of its own, a target ldmd killed after it had received the final state could not move the image
to the staging area at restart (EXDEV), the guest recovery then removed it as a dead guest's leftover, and
the target still answered the source's recovery query "kept": the source removed its copy, and the domain
was gone from both hosts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ldoms.hv.supervisor import GuestSupervisor
from ldoms.migration.journal import STAGING_DIR, JournalStore


def test_the_staging_area_is_inside_the_guests_directory(tmp_path: Path) -> None:
    guests = tmp_path / "guests"
    guests.mkdir(mode=0o700)
    journals = JournalStore.in_home(tmp_path)
    image = journals.image_path("m1")
    assert image.parent == guests / STAGING_DIR and image.name.endswith(".image")
    assert os.stat(image.parent).st_dev == os.stat(guests).st_dev  # a rename, never a copy
    assert stat.S_IMODE(os.stat(image.parent).st_mode) & 0o077 == 0  # private, like the guests directory
    assert journals.dir == tmp_path / "migrations"  # the journals themselves stay where they were
    image.write_bytes(b"pages")
    # The guest recovery removes the files of guests it does not know: never a staged image.
    assert GuestSupervisor(guests).names_with_files() == set()
    (guests / "ldg9.mem").write_bytes(b"x")
    assert GuestSupervisor(guests).names_with_files() == {"ldg9"}


def test_a_bare_store_stages_beside_its_journals(tmp_path: Path) -> None:
    journals = JournalStore(tmp_path / "m")
    assert journals.image_path("m1").parent == tmp_path / "m"
