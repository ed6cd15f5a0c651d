"""`python -m ldoms.hv.verify --dir GUESTS --domain NAME [--steps N] [--mem FILE]`: prove a ledger guest's
memory consistent, independently of the guest and of the migration that moved it.

It reads the domain's memory blocks and seed from `NAME.spec.json`, the step count from the image's header
page (or `--steps`, to pin it to what the suspend answer said), and compares the image (`NAME.mem`, or
`--mem`) with the one an unmigrated guest holds after that many steps (ldoms/hv/ledger.py).  The guest must
be suspended or gone: a running guest's image changes under the comparison (use its `verify` control
command instead, which holds the guest still).

Prints one line per page that differs, then a summary line.  Exit status: 0 consistent, 1 inconsistent,
2 could not verify (no such guest files, not a ledger guest, guest running, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ldoms.errors import LdmError
from ldoms.hv.control import GuestControl, GuestControlError
from ldoms.hv.files import GuestFiles
from ldoms.hv.ledger import HEADER_PAGE, read_header, verify
from ldoms.hv.memory import GuestMemory
from ldoms.hv.workload import parse_workload
from ldoms.units import format_size


class CannotVerify(Exception):
    pass


def _running(files: GuestFiles) -> bool:
    """True if the guest answers and is not suspended."""
    try:
        status = GuestControl(files, timeout=2.0).status()
    except GuestControlError:
        return False  # no guest (or a dead one's socket): its image holds still
    return not status.get("suspended", False)


def run(
    directory: Path, domain: str, *, steps: int | None = None, mem: Path | None = None
) -> tuple[bool, list[str]]:
    """Verify; return (consistent, output lines: the problems, then the summary)."""
    files = GuestFiles(directory, domain)
    try:
        spec = json.loads(files.spec.read_text())
        blocks = [(int(ra), int(size)) for ra, size in spec["mblocks"]]
        config = parse_workload(dict(spec.get("variables", {})))
    except (OSError, ValueError, KeyError, TypeError, LdmError) as e:
        raise CannotVerify(f"cannot read the spec of LDom {domain} ({files.spec}): {e}") from None
    if config.name != "ledger":
        raise CannotVerify(
            f"LDom {domain} runs the '{config.name}' workload, not the ledger: nothing to verify"
        )
    if mem is None and _running(files):
        raise CannotVerify(
            f"the guest of LDom {domain} is running: suspend it first, or use its verify control command"
        )
    path = mem if mem is not None else files.mem
    try:
        memory = GuestMemory(path, blocks, create=False)
    except (OSError, ValueError) as e:
        raise CannotVerify(f"cannot open the memory image of LDom {domain}: {e}") from None
    with memory:
        header = memory.pages()[HEADER_PAGE]
        head = read_header(header)
        if steps is None:
            if head is not None:
                steps = head.steps
            elif not header.any():
                steps = 0  # no step has run
            else:
                steps = -1
        if steps < 0:
            problems = [f"header page {HEADER_PAGE}: not a ledger header, and no --steps given"]
        else:
            problems = verify(memory, config.seed, steps)
        del header
        npages = memory.npages
        size = memory.size
    what = f"after {steps} steps (seed {config.seed}, {npages} pages, {format_size(size)})"
    if problems:
        return False, [*problems, f"ledger of LDom {domain}: INCONSISTENT {what}"]
    return True, [f"ledger of LDom {domain}: consistent {what}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ldoms.hv.verify", description="Verify a ledger guest's memory image."
    )
    ap.add_argument("--dir", required=True, type=Path, help="the host's guests directory")
    ap.add_argument("--domain", required=True, help="the domain whose image to verify")
    ap.add_argument("--steps", type=int, help="the step count to check against (default: the header's)")
    ap.add_argument("--mem", type=Path, help="verify this image file instead of the guest's NAME.mem")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 0:
        ap.error(f"--steps {args.steps}: a step count is 0 or more")
    try:
        ok, lines = run(args.dir, args.domain, steps=args.steps, mem=args.mem)
    except CannotVerify as e:
        print(f"ldoms.hv.verify: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
