"""Summarise py-spy raw (collapsed) stacks: samples per thread, top self frames, inclusive frames.

    python benchmarks/pyspy_summary.py STACKS.txt [TOP] [ONLY_STACKS_WITH]
"""

import collections
import sys


def load(path):
    rows = []
    for line in open(path):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if stack and n.isdigit():  # a frame name with a line break in it leaves a partial line
            rows.append((stack.split(";"), int(n)))
    return rows


def short(frame):
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    return f"{name} ({loc.split('/')[-1]})" if loc else name


def main(path, top=40, match=None):
    rows = load(path)
    total = sum(n for _, n in rows)
    threads = collections.Counter()
    selfc = collections.Counter()
    incl = collections.Counter()
    for frames, n in rows:
        if match and not any(match in f for f in frames):
            continue
        threads[frames[0]] += n
        selfc[short(frames[-1])] += n
        for f in set(short(f) for f in frames[1:]):
            incl[f] += n
    print(f"== {path}: {total} samples" + (f" (matching {match!r})" if match else ""))
    for t, n in threads.most_common(8):
        print(f"  thread {t[:60]:60s} {n:7d} {100 * n / total:5.1f}%")
    print("-- self")
    for f, n in selfc.most_common(top):
        print(f"  {n:7d} {100 * n / total:5.1f}%  {f[:150]}")
    print("-- inclusive")
    for f, n in incl.most_common(top * 2):
        print(f"  {n:7d} {100 * n / total:5.1f}%  {f[:150]}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40, sys.argv[3] if len(sys.argv) > 3 else None)
