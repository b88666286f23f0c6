"""What the elastic benchmarks share: where the repository and ../shared are, their common flags,
and how targets are reported (bench/run.sh's contract: results.json with a `targets` object,
--check fails on a missed target)."""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shared_dir():
    env = os.environ.get("EDGESPLIT_SHARED_DIR")
    return env if env else os.path.join(os.path.dirname(ROOT), "shared")


def parser(doc):
    """The flags every elastic benchmark takes: --quick, --out, --check, --bin-dir."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer images, frames or rounds (minutes)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--bin-dir", default=os.environ.get("EDGESPLIT_BIN_DIR",
                                                      os.path.join(ROOT, "build", "bin")))
    return ap


def parse_ab(specs, bench, example):
    """--ab NAME=FLAGS specs as {NAME: [flags]}, or None (after one sentence on stderr) when one is
    malformed or a NAME repeats."""
    variants = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name or not flags.strip() or name in variants:
            print(f"{bench}: --ab takes NAME=FLAGS, each NAME once, e.g. --ab '{example}'",
                  file=sys.stderr)
            return None
        variants[name] = flags.split()
    return variants


def report(name, targets, check):
    """Prints each target on stderr; the exit status (1 with --check when one is missed)."""
    for k, v in targets.items():
        print(f"{name}: {k} = {v['value']} (target {v['target']}): "
              f"{'met' if v['pass'] else 'missed'}", file=sys.stderr)
    return 1 if check and not all(v["pass"] for v in targets.values()) else 0
