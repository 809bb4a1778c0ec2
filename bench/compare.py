#!/usr/bin/env python3
"""Print Rust/torch time ratios for the cases two bench JSON files share.

    python3 bench/compare.py bench/results/torch-DATE.json RUST.json [--max-other-cpu 0.10]

Both files use torch_bench.py's schema: {"meta": {...}, "results": {KEY: {"median_ms": float,
"other_cpu_frac": float (optional), ...}}}. Only keys present in both are compared.
ratio = rust median / torch median (< 1: Rust faster). Rows where either side saw other
processes use more than --max-other-cpu of the machine are marked '!' (contended, not a
valid comparison). Standard library only.
"""
import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torch_json")
    ap.add_argument("rust_json")
    ap.add_argument("--max-other-cpu", type=float, default=0.10)
    a = ap.parse_args()
    t, r = (json.load(open(p)) for p in (a.torch_json, a.rust_json))
    tm, rm = t.get("meta", {}), r.get("meta", {})
    for k in ("threads",):
        if tm.get(k) != rm.get(k):
            print(f"WARNING: {k} differs: torch {tm.get(k)} vs rust {rm.get(k)}")
    tc, rc = tm.get("machine", {}).get("cpu"), rm.get("machine", {}).get("cpu")
    if tc and rc and tc != rc:
        print(f"WARNING: different CPUs: torch '{tc}' vs rust '{rc}': ratios are not meaningful")
    keys = [k for k in t["results"] if k in r["results"]]
    print(f"{'case':34s} {'torch ms':>10s} {'rust ms':>10s} {'rust/torch':>10s}")
    for k in keys:
        tt, rr = t["results"][k], r["results"][k]
        bad = max(tt.get("other_cpu_frac", 0), rr.get("other_cpu_frac", 0)) > a.max_other_cpu
        ratio = rr["median_ms"] / tt["median_ms"]
        print(f"{k:34s} {tt['median_ms']:10.2f} {rr['median_ms']:10.2f} {ratio:10.2f}{'  !' if bad else ''}")
    only_t = sorted(set(t["results"]) - set(keys))
    only_r = sorted(set(r["results"]) - set(keys))
    if only_t:
        print("torch only:", ", ".join(only_t))
    if only_r:
        print("rust only:", ", ".join(only_r))


if __name__ == "__main__":
    main()
