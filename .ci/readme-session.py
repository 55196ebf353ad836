#!/usr/bin/env python3
"""Runs the README's grpcurl session exactly as written, against a fresh `billpay up`.

Usage: .ci/readme-session.py <dir holding the billpay binary>

Every ```sh block of README.md's "Using it with grpcurl" section, in order, is one
shell session (variables carry over). Each command must succeed, unless the comment
right under it starts with `# ERROR:`; then it must fail, and every `Code: X` and
`"reason":"X"` / `"field":"X"` that comment names must be in what it printed. The
other comments under a command name parts of its reply: each `"key": "value"` pair
with a concrete value, and each enum name (BILL_STATUS_DUE, EVENT_KIND_…), must
appear in its output. `up` runs on free ports; the README's default addresses are
replaced by the ones it got.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION_START = "## Using it with grpcurl"
SECTION_END = "## Auth"
DEFAULT_ADDRS = {
    "billing": "127.0.0.1:50051",
    "payment": "127.0.0.1:50052",
    "notify": "127.0.0.1:50053",
    "sim": "127.0.0.1:50060",
}
ENUM = re.compile(
    r"\b(?:BILL_STATUS|PLAN_STATUS|PAYMENT_STATUS|MANDATE_STATUS|EVENT_KIND|"
    r"PAYMENT_EVENT_KIND|CREDIT_LIMIT_CHANGE_KIND)_[A-Z_]+\b"
)
PAIR = re.compile(r'"(\w+)": "([^"]*)"')
COMMAND_TIMEOUT_SECS = 60


def sh_blocks(readme: str) -> list[str]:
    section = readme[readme.index(SECTION_START) : readme.index(SECTION_END)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def open_quote(text: str) -> bool:
    """Whether `text` ends inside a quoted string (shell rules, roughly)."""
    quote = None
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
    return quote is not None


def commands(block: str) -> list[tuple[str, list[str]]]:
    """Splits a block into (command, the comment lines under it)."""
    result: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.lstrip().startswith("#"):
            if result:
                result[-1][1].append(line.lstrip())
            i += 1
            continue
        text = [line]
        heredoc = re.search(r"<<(\w+)", line)
        loop = re.match(r"\s*(until|while|for)\b", line)
        i += 1
        while i < len(lines):
            unbalanced = open_quote("\n".join(text))
            if heredoc:
                if text[-1] == heredoc.group(1):
                    break
            elif loop:
                if text[-1].strip() == "done":
                    break
            elif not (text[-1].endswith("\\") or unbalanced):
                break
            text.append(lines[i])
            heredoc = heredoc or re.search(r"<<(\w+)", lines[i])
            i += 1
        result.append(("\n".join(text), []))
    return result


def expectations(comments: list[str]) -> tuple[bool, list[str]]:
    """(expect failure, texts the output must contain)."""
    body = "\n".join(comments)
    failing = bool(comments) and comments[0].startswith(("# ERROR:", "# Error"))
    wanted = set(ENUM.findall(body))
    if failing:
        wanted |= {f"Code: {code}" for code in re.findall(r"Code: (\w+)", body)}
        wanted |= {f'"reason":"{r}"' for r in re.findall(r'"reason":"(\w+)"', body)}
        wanted |= {f'"field":"{f}"' for f in re.findall(r'"field":"([\w.]+)"', body)}
        wanted |= set(re.findall(r"does not expose service", body))
    else:
        wanted |= {
            f'"{key}": "{value}"'
            for key, value in PAIR.findall(body)
            if value and "…" not in value
        }
    return failing, sorted(wanted)


def start_up(billpay: Path, work: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    out = open(work / "up.out", "w")
    err = open(work / "up.log", "w")
    up = subprocess.Popen(
        [str(billpay), "up", "--data-dir", str(work / "data")]
        + [f"--{name}-addr=127.0.0.1:0" for name in ("billing", "payment", "notify", "sim")],
        stdout=out,
        stderr=err,
        cwd=work,
    )
    deadline = time.monotonic() + 60
    banner = ""
    while "stops it cleanly" not in banner:
        if up.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"billpay up did not start:\n{(work / 'up.log').read_text()}")
        time.sleep(0.1)
        banner = (work / "up.out").read_text()
    addrs = {
        "billing": re.search(r"^  billing-svc  (\S+)", banner, re.M).group(1),
        "payment": re.search(r"^  payment-svc  (\S+)", banner, re.M).group(1),
        "notify": re.search(r"provider notifications on (\S+)\)", banner).group(1),
        "sim": re.search(r"^  provider-sim (\S+)", banner, re.M).group(1),
    }
    return up, addrs


def main() -> int:
    billpay = Path(sys.argv[1]).resolve() / "billpay"
    work = Path(tempfile.mkdtemp(prefix="readme-session-"))
    up, addrs = start_up(billpay, work)
    session = None
    failures = 0
    try:
        readme = (ROOT / "README.md").read_text()
        for name, default in DEFAULT_ADDRS.items():
            readme = readme.replace(default, addrs[name])
        env = dict(os.environ)
        env["PATH"] = f"{billpay.parent}:{env['PATH']}"
        env["BILLPAY_DATA_DIR"] = str(work / "data")
        session = subprocess.Popen(
            ["bash"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=work,
            env=env,
        )
        # Stricter than a pasted session: a failing grpcurl fails its pipeline too.
        session.stdin.write("set -o pipefail\n")
        count = 0
        for block in sh_blocks(readme):
            for command, comments in commands(block):
                count += 1
                output_file = work / f"out.{count}"
                session.stdin.write(f"{{\n{command}\n}} >{output_file} 2>&1\necho \"__rc=$?\"\n")
                session.stdin.flush()
                line = session.stdout.readline()
                while line and not line.startswith("__rc="):
                    line = session.stdout.readline()
                if not line:
                    sys.exit(f"the shell ended at command {count}:\n{command}")
                rc = int(line.strip().split("=")[1])
                output = output_file.read_text()
                failing, wanted = expectations(comments)
                problems = []
                if failing and rc == 0:
                    problems.append("succeeded, but the README says it fails")
                if not failing and rc != 0:
                    problems.append(f"failed (exit {rc})")
                problems += [f"printed no {text}" for text in wanted if text not in output]
                first_line = command.splitlines()[0]
                if problems:
                    failures += 1
                    print(f"FAIL {count}: {first_line}\n  " + "\n  ".join(problems))
                    print("  output:\n    " + "\n    ".join(output.splitlines()[-25:]))
                else:
                    print(f"ok   {count}: {first_line}" + (f"  ({len(wanted)} checks)" if wanted else ""))
        if count < 30:
            print(f"FAIL expected at least 30 commands, found {count}")
            failures += 1
    finally:
        if session:
            session.stdin.close()
            session.wait(timeout=COMMAND_TIMEOUT_SECS)
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=30)
        if code != 0:
            print(f"FAIL billpay up exited {code} on SIGTERM")
            failures += 1
    if failures:
        print(f"readme session: {failures} failed; up's log: {work / 'up.log'}")
        return 1
    print(f"readme session: all {count} commands did what the README says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
