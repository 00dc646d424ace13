"""What both demos print with: headings, colours, the result line, the entry point."""

from __future__ import annotations

import signal
import sys

BOLD, DIM, GREEN, RED, END = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("", "", "", "", "")


def step(text: str):
    print(f"\n{BOLD}== {text}{END}", flush=True)


def result(success: str, failures: list[str]) -> int:
    step("Result: " + (f"{GREEN}{success}{END}" if not failures
                       else f"{RED}unexpected: {'; '.join(failures)}{END}"))
    return 1 if failures else 0


def run(main) -> None:
    """Run main() as the process; SIGTERM and Ctrl-C leave through the lab's cleanup."""
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: namespaces and processes removed", file=sys.stderr)
        sys.exit(130)
