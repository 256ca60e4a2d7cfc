"""What kvtorch's Python commands (python -m kvtorch.export, python -m
kvtorch.generate) share with the Go command line: bad input ends in one
line on stderr and a non-zero exit — 2 for a usage error, 1 for anything
else, 130 when interrupted — never a traceback."""
import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), as kvtorch's Go commands."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def one_line(e):
    """An exception as one line: its message (or its type), folded."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, KeyError):
        text = f"missing {text}"
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    return text


def run(prog, main, argv=None):
    """Runs main(argv); any exception ends the process with one line."""
    try:
        main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except RecursionError:
        print(f"{prog}: input nested too deeply", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the point: one line, whatever went wrong
        print(f"{prog}: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
