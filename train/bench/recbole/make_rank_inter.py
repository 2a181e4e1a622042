#!/usr/bin/env python3
"""Turn a RecBole atomic .inter file with real timestamps (e.g. RecBole's bundled
dataset_example/ml-100k/ml-100k.inter) into the rank-timestamp atomic file that run.py expects.

Per user: interactions sorted by timestamp, ties kept in file order (stable); consecutive repeats
of the same item collapsed; users with fewer than MIN_LEN items dropped; the timestamp column is
replaced by the 0-based rank in that order. Users are written in order of first appearance.

Usage: make_rank_inter.py SRC.inter OUT_DIR NAME [--min-len 3]
       (writes OUT_DIR/NAME/NAME.inter; prints a one-line summary to stderr)
Needs only the Python standard library.
"""
import argparse
import csv
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out_dir")
    ap.add_argument("name")
    ap.add_argument("--min-len", type=int, default=3)
    a = ap.parse_args()

    with open(a.src, newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        header = [h.split(":")[0] for h in next(rows)]
        ui, ii, ti = header.index("user_id"), header.index("item_id"), header.index("timestamp")
        per_user = {}  # dict keeps first-appearance order
        for n, r in enumerate(rows):
            per_user.setdefault(r[ui], []).append((float(r[ti]), n, r[ii]))

    d = os.path.join(a.out_dir, a.name)
    os.makedirs(d, exist_ok=True)
    kept = inters = 0
    with open(os.path.join(d, a.name + ".inter"), "w", newline="") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, evs in per_user.items():
            evs.sort(key=lambda e: (e[0], e[1]))  # time, then file order
            seq = []
            for _, _, item in evs:
                if not seq or seq[-1] != item:
                    seq.append(item)
            if len(seq) < a.min_len:
                continue
            kept += 1
            inters += len(seq)
            for rank, item in enumerate(seq):
                f.write(f"{user}\t{item}\t{rank}\n")
    print(f"{len(per_user)} users read, {kept} kept, {inters} interactions -> {d}", file=sys.stderr)


if __name__ == "__main__":
    main()
