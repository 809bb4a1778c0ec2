#!/usr/bin/env python3
"""PyTorch CPU reference timings for kestrel's hot paths (f32).

    bench/.venv/bin/python bench/torch_bench.py --threads 2 --repeat 5 \
        --json bench/results/torch-$(date +%F).json

Every case reports the median (and min/max) wall time in ms over --repeat runs after
--warmup runs. Case keys are stable: a Rust bench should emit the same keys so that
bench/compare.py can print ratios (see bench/README.md).

Cases (all random data / random-init weights; eval mode; torch.inference_mode()):
  r18_l123_b{1,8}           torchvision resnet18, stem..layer3, returns (layer1, layer2, layer3), 256x256
  wrn50_l123_b{1,8}         torchvision wide_resnet50_2, same
  padim_score_b{1,8}        PaDiM scoring after the backbone (R18 layer1..3 features given):
                            nearest-upsample layer2/3 to 64x64, concat (448 ch), random subset
                            d=100, Mahalanobis with per-position inverse covariances
                            (4096 x 100 x 100, random SPD), sqrt, bilinear upsample to 256,
                            Gaussian blur sigma 4 (33x33 2-D kernel, reflect pad) as anomalib
  padim_score_sepblur_b1    same but separable blur (33 + 33 taps); same output to ~1e-6
  blur33_b1 / blur33_sep_b1 the blur alone on 1x1x256x256
  patchcore_score_{wrn50,r18}_b1
                            PatchCore scoring after the backbone (layer2+3 features given):
                            3x3/1/1 avgpool on both, bilinear upsample layer3 to layer2 grid
                            (32x32), concat (1536 / 384 dims), 1-NN vs a memory bank of
                            20480 x D (10% of 200 images x 1024 patches) via
                            addmm(|q|^2+|b|^2, q, b^T, alpha=-2), k=9 re-weighting of the image
                            score as anomalib, nearest upsample to 256 + blur
  coreset_torch / coreset_numpy
                            greedy k-center over 100000 x 384 random features, selecting 10%
                            (10000): random start index, then repeatedly argmax of the min
                            squared distance, updated with one matvec pass per step
                            (|x|^2 - 2 x.c + |c|^2). --coreset-select shrinks it for quick runs
  coreset_anomalib_step     one step of anomalib's update (norm(x - c) over all rows), per step
  knn_torch_addmm_chunk8192 / knn_torch_addmm_full / knn_torch_cdist_chunk8192 / knn_numpy_chunk8192
                            4096 queries x 384 vs a 50000 bank, min squared L2 per query
"""

import argparse
import os
import sys


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per case (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--coreset-repeat", type=int, default=1, help="timed runs for the (slow) coreset cases")
    ap.add_argument("--coreset-select", type=int, default=10000, help="points to select (10%% of 100k)")
    ap.add_argument("--only", action="append", default=None,
                    help="run only cases whose key starts with this prefix (repeatable)")
    ap.add_argument("--json", default=None, help="write results here (rewritten after every case)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the results already in --json and overwrite only the cases run now "
                         "(to redo contended or slow cases; each case keeps its own timestamp)")
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="before each case wait up to this many seconds for the rest of the machine to be "
                         "idle (other processes < --idle-frac of all CPUs over 1 s); 0 = don't wait")
    ap.add_argument("--idle-frac", type=float, default=0.10,
                    help="other processes' CPU share above which a case counts as contended")
    ap.add_argument("--retry-contended", type=int, default=0,
                    help="re-run a contended case up to this many times, keeping the least contended")
    return ap.parse_args()


ARGS = parse_args()
# Thread counts must be fixed before torch / numpy (OpenBLAS) load.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

torch.set_num_threads(ARGS.threads)
RESULTS = {}
CLK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot():
    """(machine busy jiffies, all jiffies, this process's jiffies incl. threads)."""
    with open("/proc/stat") as f:
        v = [int(t) for t in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    total = sum(v[:8])  # excludes guest (already in user)
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])  # utime + stime (all threads)
    return total - idle, total, own


def other_cpu_frac(a, b):
    """Share of the machine's CPU capacity used by OTHER processes between two snapshots."""
    busy, total, own = (b[i] - a[i] for i in range(3))
    return max(0.0, (busy - own) / total) if total > 0 else 0.0


def wait_idle():
    if ARGS.wait_idle <= 0:
        return None
    t0 = time.time()
    while True:
        a = cpu_snapshot()
        time.sleep(1.0)
        frac = other_cpu_frac(a, cpu_snapshot())
        if frac < ARGS.idle_frac or time.time() - t0 > ARGS.wait_idle:
            return round(frac, 3)


def wanted(key):
    return ARGS.only is None or any(key.startswith(p) for p in ARGS.only)


def timeit(key, fn, repeat=None, warmup=None, **info):
    """Time fn; if other processes used > --idle-frac of the machine meanwhile, try again
    (up to --retry-contended more times) and keep the least contended attempt."""
    if not wanted(key):
        return None
    best, out = None, None
    for attempt in range(ARGS.retry_contended + 1):
        res, out_a = _timeit_once(key, fn, repeat, warmup, info)
        res["attempt"] = attempt
        if best is None or res["other_cpu_frac"] < best["other_cpu_frac"]:
            best, out = res, out_a
        if res["other_cpu_frac"] <= ARGS.idle_frac:
            break
    best["measured"] = datetime.datetime.now().isoformat(timespec="seconds")
    RESULTS[key] = best
    save()
    return out


def _timeit_once(key, fn, repeat, warmup, info):
    repeat = ARGS.repeat if repeat is None else repeat
    warmup = ARGS.warmup if warmup is None else warmup
    idle_before = wait_idle()
    out = None
    for _ in range(warmup):
        out = fn()
    runs = []
    snap0 = cpu_snapshot()
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    other = other_cpu_frac(snap0, cpu_snapshot())
    med = statistics.median(runs)
    res = {"median_ms": round(med, 3), "min_ms": round(min(runs), 3), "max_ms": round(max(runs), 3),
           "repeat": repeat, "warmup": warmup, "runs_ms": [round(r, 3) for r in runs],
           "other_cpu_frac": round(other, 3), **info}
    if idle_before is not None:
        res["other_cpu_frac_before"] = idle_before
    flag = "  CONTENDED" if other > ARGS.idle_frac else ""
    print(f"{key:34s} median {med:10.2f} ms  (min {min(runs):.2f}, max {max(runs):.2f}, n={repeat}) "
          f"other-cpu {other:.0%}{flag}", flush=True)
    return res, out


# ---------------------------------------------------------------- backbones
def backbone_to_layer3(model):
    def f(x):
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        l1 = model.layer1(x)
        l2 = model.layer2(l1)
        l3 = model.layer3(l2)
        return l1, l2, l3
    return f


def bench_backbones():
    for name, ctor in (("r18", torchvision.models.resnet18), ("wrn50", torchvision.models.wide_resnet50_2)):
        if not any(wanted(f"{name}_l123_b{b}") for b in (1, 8)):
            continue
        torch.manual_seed(0)
        model = ctor().eval()
        f = backbone_to_layer3(model)
        for b in (1, 8):
            x = torch.randn(b, 3, 256, 256)
            timeit(f"{name}_l123_b{b}", lambda: f(x), input=[b, 3, 256, 256],
                   outputs="layer1, layer2, layer3")


# ---------------------------------------------------------------- blur (anomalib GaussianBlur2d)
def gaussian_kernel1d(sigma=4.0):
    ks = 2 * int(4.0 * sigma + 0.5) + 1  # 33
    x = torch.arange(ks, dtype=torch.float32) - ks // 2
    k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


K1 = gaussian_kernel1d(4.0)
K2 = torch.outer(K1, K1)[None, None]  # (1,1,33,33)
PAD = K1.numel() // 2


def blur2d(x):
    """anomalib: reflect pad then one 2-D conv with the full 33x33 kernel."""
    x = F.pad(x, (PAD, PAD, PAD, PAD), mode="reflect")
    return F.conv2d(x, K2)


def blur_sep(x):
    x = F.pad(x, (PAD, PAD, PAD, PAD), mode="reflect")
    x = F.conv2d(x, K1.view(1, 1, 1, -1))
    return F.conv2d(x, K1.view(1, 1, -1, 1))


# ---------------------------------------------------------------- PaDiM
def bench_padim():
    keys = ["padim_score_b1", "padim_score_b8", "padim_score_sepblur_b1", "blur33_b1", "blur33_sep_b1"]
    if not any(wanted(k) for k in keys):
        return
    g = torch.Generator().manual_seed(1)
    d, hw = 100, 64 * 64
    idx = torch.randperm(64 + 128 + 256, generator=g)[:d]
    mean = torch.randn(d, hw, generator=g)
    # Random SPD inverse covariances, (HW, d, d): A A^T / d + 0.5 I.
    inv_cov = torch.empty(hw, d, d)
    for s in range(0, hw, 512):
        a = torch.randn(min(512, hw - s), d, d, generator=g)
        inv_cov[s:s + 512] = a @ a.transpose(1, 2) / d + 0.5 * torch.eye(d)

    def score(l1, l2, l3, blur):
        emb = torch.cat([l1, F.interpolate(l2, size=l1.shape[-2:], mode="nearest"),
                         F.interpolate(l3, size=l1.shape[-2:], mode="nearest")], 1)
        emb = torch.index_select(emb, 1, idx)
        b, c, h, w = emb.shape
        delta = (emb.reshape(b, c, h * w) - mean).permute(2, 0, 1)  # (HW, B, d)
        dist = torch.sum(torch.matmul(delta, inv_cov) * delta, -1).permute(1, 0)  # (B, HW)
        dist = dist.reshape(b, 1, h, w).clamp(min=0).sqrt()
        amap = F.interpolate(dist, size=(256, 256), mode="bilinear", align_corners=False)
        return blur(amap)

    feats = {}
    for b in (1, 8):
        feats[b] = (torch.randn(b, 64, 64, 64, generator=g).relu(), torch.randn(b, 128, 32, 32, generator=g).relu(),
                    torch.randn(b, 256, 16, 16, generator=g).relu())
    info = dict(d=d, positions=hw, inv_cov_shape=[hw, d, d], out=[256, 256], blur="sigma 4, 33 taps, reflect")
    timeit("padim_score_b1", lambda: score(*feats[1], blur2d), **info)
    timeit("padim_score_b8", lambda: score(*feats[8], blur2d), **info)
    out = timeit("padim_score_sepblur_b1", lambda: score(*feats[1], blur_sep), **info)
    if out is not None:
        ref = score(*feats[1], blur2d)
        RESULTS["padim_score_sepblur_b1"]["max_abs_diff_vs_2d_blur"] = (out - ref).abs().max().item()
    m = torch.rand(1, 1, 256, 256, generator=g)
    timeit("blur33_b1", lambda: blur2d(m), input=[1, 1, 256, 256])
    timeit("blur33_sep_b1", lambda: blur_sep(m), input=[1, 1, 256, 256])


# ---------------------------------------------------------------- PatchCore
def sqdist_addmm(q, bank, bank_sq):
    return torch.addmm(q.pow(2).sum(1, keepdim=True) + bank_sq.unsqueeze(0), q, bank.t(), alpha=-2)


def bench_patchcore():
    for name, c2, c3 in (("wrn50", 512, 1024), ("r18", 128, 256)):
        key = f"patchcore_score_{name}_b1"
        if not wanted(key):
            continue
        g = torch.Generator().manual_seed(2)
        dim = c2 + c3
        n_bank = 20480
        bank = torch.randn(n_bank, dim, generator=g).relu()
        bank_sq = bank.pow(2).sum(1)
        l2 = torch.randn(1, c2, 32, 32, generator=g).relu()
        l3 = torch.randn(1, c3, 16, 16, generator=g).relu()
        pool = torch.nn.AvgPool2d(3, 1, 1)

        def score():
            a = pool(l2)
            b3 = F.interpolate(pool(l3), size=a.shape[-2:], mode="bilinear", align_corners=False)
            emb = torch.cat([a, b3], 1)
            bsz, c, h, w = emb.shape
            emb = emb.permute(0, 2, 3, 1).reshape(-1, c)  # (B*HW, D)
            d2 = sqdist_addmm(emb, bank, bank_sq)
            patch_d2, loc = d2.min(1)
            patch_scores = patch_d2.clamp(min=0).sqrt().reshape(bsz, h * w)
            loc = loc.reshape(bsz, h * w)
            # anomalib compute_anomaly_score, num_neighbors = 9
            ar = torch.arange(bsz)
            max_p = patch_scores.argmax(1)
            max_feat = emb.reshape(bsz, h * w, c)[ar, max_p]
            s_star = patch_scores[ar, max_p]
            nn_sample = bank[loc[ar, max_p]]
            support = sqdist_addmm(nn_sample, bank, bank_sq).topk(9, largest=False).indices  # (B, 9)
            dists = (max_feat.unsqueeze(1) - bank[support]).pow(2).sum(-1).sqrt()  # (B, 9)
            image_score = (1 - F.softmax(dists, 1))[:, 0] * s_star
            amap = F.interpolate(patch_scores.reshape(bsz, 1, h, w), size=(256, 256))  # nearest
            return blur2d(amap), image_score

        timeit(key, score, dim=dim, bank=[n_bank, dim], queries=1024, k_reweight=9)


# ---------------------------------------------------------------- coreset
def coreset_torch(x, x_sq, n_select, start):
    sel = torch.empty(n_select, dtype=torch.long)
    idx = start
    min_d = torch.full((x.shape[0],), float("inf"))
    for i in range(n_select):
        sel[i] = idx
        c = x[idx]
        d = x_sq - 2 * torch.mv(x, c) + x_sq[idx]
        torch.minimum(min_d, d, out=min_d)
        idx = int(torch.argmax(min_d))
    return sel


def coreset_numpy(x, x_sq, n_select, start):
    sel = np.empty(n_select, dtype=np.int64)
    idx = start
    min_d = np.full(x.shape[0], np.inf, dtype=np.float32)
    for i in range(n_select):
        sel[i] = idx
        d = x @ x[idx]
        d *= -2
        d += x_sq
        d += x_sq[idx]
        np.minimum(min_d, d, out=min_d)
        idx = int(np.argmax(min_d))
    return sel


def bench_coreset():
    keys = ["coreset_torch", "coreset_numpy", "coreset_anomalib_step"]
    if not any(wanted(k) for k in keys):
        return
    g = torch.Generator().manual_seed(3)
    n, dim, k = 100_000, 384, ARGS.coreset_select
    x = torch.randn(n, dim, generator=g)
    x_sq = x.pow(2).sum(1)
    xn, xn_sq = x.numpy(), x_sq.numpy()
    start = int(torch.randint(n, (1,), generator=g))
    info = dict(n=n, dim=dim, select=k, full_select=10000)
    s_t = timeit("coreset_torch", lambda: coreset_torch(x, x_sq, k, start),
                 repeat=ARGS.coreset_repeat, warmup=0, **info)
    s_n = timeit("coreset_numpy", lambda: coreset_numpy(xn, xn_sq, k, start),
                 repeat=ARGS.coreset_repeat, warmup=0, **info)
    for key in ("coreset_torch", "coreset_numpy"):
        if key in RESULTS:
            RESULTS[key]["per_step_ms"] = round(RESULTS[key]["median_ms"] / RESULTS[key]["select"], 4)
    if s_t is not None and s_n is not None:
        same = int((s_t.numpy() == s_n).sum())
        for key in ("coreset_torch", "coreset_numpy"):
            RESULTS[key]["selections_equal_torch_vs_numpy"] = same
        print(f"coreset torch vs numpy: {same}/{k} selections equal (ties/rounding may differ)")

    # anomalib's own update: distance = norm(features - center, dim=1); min; argmax
    min_d = torch.full((n, 1), float("inf"))

    def anomalib_step():
        nonlocal min_d
        c = x[start:start + 1]
        dist = torch.linalg.norm(x - c, ord=2, dim=1, keepdim=True)
        min_d = torch.minimum(min_d, dist)
        return int(torch.argmax(min_d))

    timeit("coreset_anomalib_step", anomalib_step, repeat=max(ARGS.repeat, 20), warmup=2,
           n=n, dim=dim, note="one step; x10000 for a 10% coreset")


# ---------------------------------------------------------------- kNN
def bench_knn():
    keys = ["knn_torch_addmm_chunk8192", "knn_torch_addmm_full", "knn_torch_cdist_chunk8192", "knn_numpy_chunk8192"]
    if not any(wanted(k) for k in keys):
        return
    g = torch.Generator().manual_seed(4)
    m, n, dim, chunk = 4096, 50_000, 384, 8192
    q = torch.randn(m, dim, generator=g)
    bank = torch.randn(n, dim, generator=g)
    bank_sq = bank.pow(2).sum(1)
    info = dict(queries=m, bank=n, dim=dim)

    def addmm_chunked():
        q_sq = q.pow(2).sum(1, keepdim=True)
        best = torch.full((m,), float("inf"))
        for s in range(0, n, chunk):
            b = bank[s:s + chunk]
            d = torch.addmm(q_sq + bank_sq[s:s + chunk].unsqueeze(0), q, b.t(), alpha=-2)
            torch.minimum(best, d.min(1).values, out=best)
        return best

    def addmm_full():
        return sqdist_addmm(q, bank, bank_sq).min(1).values

    def cdist_chunked():
        best = torch.full((m,), float("inf"))
        for s in range(0, n, chunk):
            torch.minimum(best, torch.cdist(q, bank[s:s + chunk]).pow(2).min(1).values, out=best)
        return best

    qn, bn, bn_sq = q.numpy(), bank.numpy(), bank_sq.numpy()

    def numpy_chunked():
        q_sq = (qn * qn).sum(1)
        best = np.full(m, np.inf, dtype=np.float32)
        for s in range(0, n, chunk):
            d = qn @ bn[s:s + chunk].T
            d *= -2
            d += bn_sq[s:s + chunk][None, :]
            np.minimum(best, d.min(1), out=best)
        return best + q_sq

    ref = None
    for key, fn, extra in (("knn_torch_addmm_chunk8192", addmm_chunked, dict(chunk=chunk)),
                           ("knn_torch_addmm_full", addmm_full, {}),
                           ("knn_torch_cdist_chunk8192", cdist_chunked, dict(chunk=chunk)),
                           ("knn_numpy_chunk8192", numpy_chunked, dict(chunk=chunk))):
        out = timeit(key, fn, **info, **extra)
        if out is None:
            continue
        out = torch.as_tensor(out)
        if ref is None:
            ref = torch.cdist(q.double(), bank.double()).pow(2).min(1).values.float()
        RESULTS[key]["max_abs_diff_vs_f64"] = (out - ref).abs().max().item()


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


STARTED = None
LOAD0 = None
PREVIOUS_META = None


def save():
    if not ARGS.json:
        return
    meta = {
        "started": STARTED,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable)] + sys.argv),
        "threads": ARGS.threads,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "dtype": "float32",
        "loadavg_start": LOAD0,
        "loadavg_end": loadavg(),
        "machine": machine_info(),
        "statistic": "median of repeat timed runs after warmup runs, wall ms",
        "other_cpu_frac": "per case: share of all CPUs used by other processes during the timed runs "
                          "(/proc/stat busy minus this process); > 0.10 means the numbers are contended",
    }
    if PREVIOUS_META is not None:
        meta["merged_with_earlier_run"] = PREVIOUS_META
    os.makedirs(os.path.dirname(os.path.abspath(ARGS.json)), exist_ok=True)
    tmp = ARGS.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "results": RESULTS}, f, indent=1)
        f.write("\n")
    os.replace(tmp, ARGS.json)


def main():
    global STARTED, LOAD0, PREVIOUS_META
    STARTED = datetime.datetime.now().isoformat(timespec="seconds")
    LOAD0 = loadavg()
    if ARGS.merge and ARGS.json and os.path.exists(ARGS.json):
        with open(ARGS.json) as f:
            prev = json.load(f)
        RESULTS.update(prev["results"])
        PREVIOUS_META = {k: prev["meta"].get(k) for k in ("started", "finished", "command")}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, numpy {np.__version__}, load {LOAD0}")
    with torch.inference_mode():
        bench_backbones()
        bench_padim()
        bench_patchcore()
        bench_knn()
        bench_coreset()
    save()
    if ARGS.json:
        print(f"wrote {ARGS.json}")


if __name__ == "__main__":
    main()
