"""Command-line grammar: argv after the verb -> `Request`, driven only by the verb's `VerbSpec`.  Pure.

Rules (getopt-like, options may come anywhere before `--`):
- `-x` is a boolean flag of the spec; clusters of boolean flags are accepted (`-lp` = `-l -p`);
- a value flag takes the rest of its cluster or the next word (`-o cpu,memory`, `-ocpu`, `-po cpu`);
  giving a value flag twice is an error (which value would win is not obvious);
- long options (`--auto-adj`) match exactly; `--name=value` for long value flags;
- `--` ends the options: what follows is an operand even if it starts with `-`;
- `key=value` whose key is in `spec.props` becomes a property (in order; repeats are kept for the operation
  to judge); every other word is an operand, including `name=value` for set-variable;
- the operand count is checked against the spec.

Every error is a `UsageError` (exit 2) whose one line ends with the verb's usage, as LDoms prints it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ldoms.errors import UsageError, one_line
from ldoms.ops.base import Request, VerbSpec


def synopsis(spec: VerbSpec) -> str:
    """The verb's usage as written in the spec, or one built from its grammar."""
    if spec.usage:
        return spec.usage
    parts = [spec.name]
    parts += [f"[{f}]" for f in spec.flags]
    parts += [f"[{f} value]" for f in spec.value_flags]
    parts += [f"[{p}=value]" for p in spec.props]
    if spec.max_operands != 0:
        parts.append("operand..." if spec.max_operands is None or spec.max_operands > 1 else "operand")
    return " ".join(parts)


def usage_error(spec: VerbSpec, problem: str) -> UsageError:
    # `problem` quotes the offending word, which may hold control characters: escaped, it stays one line.
    return UsageError(one_line(f"{problem}. Usage: ldm {synopsis(spec)}"))


def parse_args(spec: VerbSpec, argv: Sequence[str]) -> Request:
    flags: dict[str, Any] = {}
    props: list[tuple[str, str]] = []
    operands: list[str] = []
    words = list(argv)
    i = 0

    def set_value(flag: str, value: str) -> None:
        if flag in flags:
            raise usage_error(spec, f"Option {flag} given more than once")
        flags[flag] = value

    def next_word(flag: str) -> str:
        nonlocal i
        if i >= len(words):
            raise usage_error(spec, f"Option {flag} requires a value")
        i += 1
        return words[i - 1]

    options_done = False
    while i < len(words):
        word = words[i]
        i += 1
        if not options_done and word == "--":
            options_done = True
            continue
        if not options_done and word.startswith("-") and word != "-":
            if word.startswith("--"):
                name, eq, value = word.partition("=")
                if name in spec.flags:
                    if eq:
                        raise usage_error(spec, f"Option {name} takes no value")
                    flags[name] = True
                elif name in spec.value_flags:
                    set_value(name, value if eq else next_word(name))
                else:
                    raise usage_error(spec, f"Unknown option {name}")
                continue
            if word in spec.flags:  # exact first: a spec may define a multi-letter single-dash flag
                flags[word] = True
                continue
            if word in spec.value_flags:
                set_value(word, next_word(word))
                continue
            for j in range(1, len(word)):
                flag = f"-{word[j]}"
                if flag in spec.flags:
                    flags[flag] = True
                elif flag in spec.value_flags:
                    rest = word[j + 1 :]
                    set_value(flag, rest if rest else next_word(flag))
                    break
                else:
                    raise usage_error(spec, f"Unknown option {flag}")
            continue
        key, eq, value = word.partition("=")
        if eq and key in spec.props:
            props.append((key, value))
        else:
            operands.append(word)

    n = len(operands)
    if n < spec.min_operands:
        what = "operand" if spec.min_operands == 1 else "operands"
        raise usage_error(spec, f"Missing operands: expected at least {spec.min_operands} {what}, got {n}")
    if spec.max_operands is not None and n > spec.max_operands:
        extra = " ".join(operands[spec.max_operands :])
        raise usage_error(
            spec, f"Too many operands: expected at most {spec.max_operands}, got {n} (unexpected: {extra})"
        )
    return Request(verb=spec.name, flags=flags, props=tuple(props), operands=tuple(operands))
