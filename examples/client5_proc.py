"""
The external program of examples/client5.py (not an example on its own).

It reads numbers from its standard input, one per line; for each it sleeps
that many seconds and prints ``Line k - current time is ...``. It exits at the
end of its input, with the number of lines that were not numbers as its exit
code.
"""

import sys
import time


def main():
    bad = 0
    for k, line in enumerate(sys.stdin, 1):
        try:
            n = float(line)
        except ValueError:
            bad += 1
            print("Line %d - not a number: %r" % (k, line.strip()), flush=True)
            continue
        time.sleep(n)
        print("Line %d - current time is %s" % (k, time.asctime()), flush=True)
    return bad


if __name__ == "__main__":
    sys.exit(main())
