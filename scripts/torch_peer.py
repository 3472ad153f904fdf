#!/usr/bin/env python3
"""The PyTorch peer of ringbench's per-rank work, for side-by-side figures from one run on one card.

  attention  SDPA alone (its flash and cuDNN backends) on the shapes `ringbench bench attention`
             takes; TFLOP/s by the same convention: 4 x queries x keys x head_dim x heads, halved
             for causal. With --backward, SDPA's backward alone (autograd's dQ, dK, dV from a
             retained forward), FLOPs 2.5 x the forward's, as `bench attention --backward`.
  layer      one rank of a zigzag ring of P, as `ringbench run --emulate-world P --as-rank K` runs
             it: the normative layer (docs/design.md) on the rank's tokens, ring attention in P steps
             merged by log-sum-exp, fully masked chunk pairs skipped, and each step's K/V transfer
             replaced by a device copy of the same size on a side stream, overlapped with the
             step's attention.
  decode     SDPA with one query per sequence against a long K/V cache (grouped K/V heads as
             `enable_gqa`), the shape `ringbench bench attention --decode` takes: GB/s of K/V
             read, as a decode step reads its cache.
  check      the zigzag ring attention of this script on a small sequence with every rank's real
             K/V, against full causal SDPA: the peer's own correctness, before its timings count.

Prints one JSON object per measurement with --json, else a line of text. Needs PyTorch with CUDA
for `attention` and `layer`; `check` also runs on the CPU.
"""
import argparse
import contextlib
import json
import math
import sys
import time

# Imported by main(), so that the pure helpers (the zigzag layout) can be checked without PyTorch.
torch = None
F = None


def load_torch():
    global torch, F
    try:
        import torch as t
        import torch.nn.functional as f
    except ImportError:
        sys.exit("torch_peer.py needs PyTorch (with CUDA for `attention` and `layer`): python3 -m pip install torch")
    torch, F = t, f


def sdpa_with_lse(q, k, v, causal, backend):
    """Attention of q [1, H, Lq, D] against k, v [1, H, Lk, D] (BF16): (out [1, H, Lq, D], lse [H, Lq] FP32)."""
    h, lq = q.shape[1], q.shape[2]
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal)[:2]
    elif backend == "flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal)[:2]
    elif backend == "cudnn":
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal)[:2]
    else:
        raise SystemExit(f"torch_peer: --backend {backend}: expected flash or cudnn")
    return out, lse.reshape(h, lq).float()


def merge(o_acc, lse_acc, o, lse):
    """Merge a partial result (o [H, L, D], lse [H, L]) into FP32 accumulators by the LSE rule."""
    new = torch.logaddexp(lse_acc, lse)
    o_acc.mul_(torch.exp(lse_acc - new).unsqueeze(-1)).add_(o.float() * torch.exp(lse - new).unsqueeze(-1))
    lse_acc.copy_(new)


def zigzag_chunks(seq_len, ring):
    """[(start, len)] of the 2P chunks: lengths differ by at most one, the longer ones first."""
    n = 2 * ring
    base, extra = divmod(seq_len, n)
    out, start = [], 0
    for i in range(n):
        ln = base + (1 if i < extra else 0)
        out.append((start, ln))
        start += ln
    return out


def rank_chunks(ring, rank):
    return [rank, 2 * ring - 1 - rank]


def ring_attention(q, kv_blocks, chunks, ring, rank, backend, heads, hd, copy_stream=None):
    """Zigzag ring attention of `rank`'s queries q [T, H*D] against the K/V blocks of every step.

    kv_blocks(step, buffer) yields the block rank - step holds, [T', 2*H*D], written into `buffer`
    (the emulated transfer, on `copy_stream` when given); returns attn [T, H*D] BF16."""
    mine = rank_chunks(ring, rank)
    local_off = [0, chunks[mine[0]][1]]
    accs = []
    for c, off in zip(mine, local_off):
        ln = chunks[c][1]
        qc = q[off : off + ln].view(1, ln, heads, hd).transpose(1, 2)
        o = torch.zeros(heads, ln, hd, dtype=torch.float32, device=q.device)
        lse = torch.full((heads, ln), float("-inf"), dtype=torch.float32, device=q.device)
        accs.append((c, qc, o, lse))
    width = heads * hd
    current = kv_blocks(0, None)
    for step in range(ring):
        owner = (rank - step) % ring
        nxt = None
        if step + 1 < ring:
            nxt = kv_blocks(step + 1, current)  # queued on the copy stream: overlaps this step's attention
        theirs = rank_chunks(ring, owner)
        koff = [0, chunks[theirs[0]][1]]
        for kc, ko in zip(theirs, koff):
            ln = chunks[kc][1]
            k = current[ko : ko + ln, :width].view(1, ln, heads, hd).transpose(1, 2)
            v = current[ko : ko + ln, width:].view(1, ln, heads, hd).transpose(1, 2)
            for qc_id, qc, o, lse in accs:
                if kc > qc_id:
                    continue  # every key after every query
                out, l = sdpa_with_lse(qc, k, v, kc == qc_id, backend)
                merge(o, lse, out[0], l)
        if nxt is not None:
            if copy_stream is not None:
                torch.cuda.current_stream().wait_stream(copy_stream)
            current = nxt
    return torch.cat([o.transpose(0, 1).reshape(-1, width) for _, _, o, _ in accs]).to(torch.bfloat16)


def rope(x, pos, heads, hd):
    """docs/design.md's RoPE: (a, b) = (x[i], x[i + hd/2]) rotated by p * 10000^(-2i/hd), per head."""
    t = x.shape[0]
    xf = x.view(t, heads, hd).float()
    i = torch.arange(hd // 2, device=x.device, dtype=torch.float32)
    angle = pos.float().unsqueeze(1) * torch.pow(10000.0, -2.0 * i / hd).unsqueeze(0)  # [T, hd/2]
    cos, sin = angle.cos().unsqueeze(1), angle.sin().unsqueeze(1)
    a, b = xf[..., : hd // 2], xf[..., hd // 2 :]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(t, heads * hd).to(x.dtype)


def rms_norm(x, gain):
    return F.rms_norm(x, (x.shape[-1],), gain, eps=1e-5)


def device_time(fn, warmup, iters, dev):
    """Seconds per call: CUDA events on a GPU; the host's clock with --cpu (a logic check, no figure)."""
    if dev.type == "cpu":
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def summary(times):
    n = len(times)
    mean = sum(times) / n
    std = math.sqrt(sum((t - mean) ** 2 for t in times) / (n - 1)) if n > 1 else 0.0
    return {"iters": n, "mean_s": mean, "std_s": std, "min_s": min(times)}


def emit(result, as_json):
    if as_json:
        print(json.dumps(result))
    else:
        print(", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))


def device_of(a):
    return torch.device("cpu" if a.cpu else "cuda")


def device_name(dev):
    return "cpu" if dev.type == "cpu" else torch.cuda.get_device_name()


def cmd_attention(a):
    dev = device_of(a)
    gen = torch.Generator(device=dev).manual_seed(0)
    shape_q, shape_k = (a.batch, a.heads, a.queries, a.head_dim), (a.batch, a.heads, a.keys, a.head_dim)
    q = (torch.rand(shape_q, generator=gen, device=dev) * 2 - 1).to(torch.bfloat16)
    k = (torch.rand(shape_k, generator=gen, device=dev) * 2 - 1).to(torch.bfloat16)
    v = (torch.rand(shape_k, generator=gen, device=dev) * 2 - 1).to(torch.bfloat16)
    flops = 4.0 * a.queries * a.keys * a.head_dim * a.heads * a.batch / (2 if a.causal else 1)
    flops *= 2.5 if a.backward else 1.0
    # On the CPU there is one SDPA with LSE (the private CPU flash op), whatever --backends says.
    for backend in a.backends.split(",") if dev.type == "cuda" else ["cpu"]:
        try:
            if a.backward:
                times = device_time(sdpa_backward(q, k, v, a.causal, backend), a.warmup, a.iters, dev)
            else:
                times = device_time(lambda: sdpa_with_lse(q, k, v, a.causal, backend), a.warmup, a.iters, dev)
        except RuntimeError as e:  # a backend this build or card lacks: say so, keep going
            emit({"peer": f"torch sdpa {backend}", "error": str(e).splitlines()[0]}, a.json)
            continue
        s = summary(times)
        emit(
            {
                "peer": f"torch sdpa {backend}",
                "torch": torch.__version__,
                "device": device_name(dev),
                "heads": a.heads,
                "head_dim": a.head_dim,
                "queries": a.queries,
                "keys": a.keys,
                "batch": a.batch,
                "causal": a.causal,
                "backward": a.backward,
                **s,
                "tflops": flops / s["mean_s"] / 1e12,
                "tflops_best": flops / s["min_s"] / 1e12,
            },
            a.json,
        )


def sdpa_backward(q, k, v, causal, backend):
    """One call of SDPA's backward on `backend` (a forward retained once, untimed): the timed work."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "cpu": SDPBackend.MATH}[backend]
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    with sdpa_kernel([chosen]):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    d_out = torch.rand_like(out) * 2 - 1

    def backward():
        with sdpa_kernel([chosen]):
            torch.autograd.grad(out, (q, k, v), d_out, retain_graph=True)

    return backward


def cmd_decode(a):
    dev = device_of(a)
    gen = torch.Generator(device=dev).manual_seed(0)
    q = (torch.rand((a.batch, a.heads, 1, a.head_dim), generator=gen, device=dev) * 2 - 1).to(torch.bfloat16)
    k = (torch.rand((a.batch, a.kv_heads, a.keys, a.head_dim), generator=gen, device=dev) * 2 - 1).to(torch.bfloat16)
    v = (torch.rand((a.batch, a.kv_heads, a.keys, a.head_dim), generator=gen, device=dev) * 2 - 1).to(torch.bfloat16)
    kv_bytes = 2.0 * a.batch * a.kv_heads * a.keys * a.head_dim * 2
    gqa = a.kv_heads != a.heads
    # SDPA picks its own kernel for one query (FlashDecoding-like split where it has one).
    times = device_time(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa), a.warmup, a.iters, dev)
    s = summary(times)
    emit(
        {
            "peer": "torch sdpa decode",
            "torch": torch.__version__,
            "device": device_name(dev),
            "heads": a.heads,
            "kv_heads": a.kv_heads,
            "head_dim": a.head_dim,
            "keys": a.keys,
            "batch": a.batch,
            **s,
            "kv_bytes": kv_bytes,
            "gbps": kv_bytes / s["mean_s"] / 1e9,
            "gbps_best": kv_bytes / s["min_s"] / 1e9,
        },
        a.json,
    )


def cmd_layer(a):
    dev = device_of(a)
    d, heads, f = a.d_model, a.heads, a.mlp
    hd = d // heads
    chunks = zigzag_chunks(a.seq_len, a.ring)
    mine = rank_chunks(a.ring, a.rank)
    t = sum(chunks[c][1] for c in mine)
    pos = torch.cat([torch.arange(chunks[c][0], chunks[c][0] + chunks[c][1], device=dev) for c in mine])
    gen = torch.Generator(device=dev).manual_seed(0)

    def weight(rows, cols):
        return ((torch.rand(rows, cols, generator=gen, device=dev) * 2 - 1) / math.sqrt(rows)).to(torch.bfloat16)

    layers = [
        dict(
            g1=torch.ones(d, device=dev, dtype=torch.bfloat16),
            wq=weight(d, d),
            wkv=weight(d, 2 * d),
            wo=weight(d, d),
            g2=torch.ones(d, device=dev, dtype=torch.bfloat16),
            wup=weight(d, f),
            wdown=weight(f, d),
        )
        for _ in range(a.layers)
    ]
    x0 = (torch.rand(a.batch, t, d, generator=gen, device=dev) * 2 - 1).to(torch.bfloat16)
    largest = max(chunks[c0][1] + chunks[c1][1] for c0, c1 in (rank_chunks(a.ring, r) for r in range(a.ring)))
    buffers = [torch.empty(largest, 2 * d, device=dev, dtype=torch.bfloat16) for _ in range(2)]
    # The emulated transfers' side stream; with --cpu, copies run in order (no stream to overlap on).
    copy_stream = torch.cuda.Stream() if dev.type == "cuda" else None

    def forward():
        for b in range(a.batch):
            x = x0[b].clone()
            for w in layers:
                h = rms_norm(x, w["g1"])
                q = rope(h @ w["wq"], pos, heads, hd)
                kv = h @ w["wkv"]
                kv = torch.cat([rope(kv[:, :d], pos, heads, hd), kv[:, d:]], dim=1)

                def kv_blocks(step, current, kv=kv):
                    # The block rank - step holds, as a copy of this rank's own of its size (the
                    # emulated transfer): on the side stream, after the compute that produced it.
                    owner = (a.rank - step) % a.ring
                    rows = sum(chunks[c][1] for c in rank_chunks(a.ring, owner))
                    if step == 0:
                        return kv
                    dst = buffers[step % 2][:rows]
                    if copy_stream is not None:
                        copy_stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(copy_stream) if copy_stream is not None else contextlib.nullcontext():
                        n = min(rows, kv.shape[0])
                        dst[:n].copy_(kv[:n])
                        if rows > n:
                            dst[n:].copy_(kv[: rows - n])
                    return dst

                attn = ring_attention(q, kv_blocks, chunks, a.ring, a.rank, a.backend, heads, hd, copy_stream)
                x = x + attn @ w["wo"]
                x = x + F.gelu(rms_norm(x, w["g2"]) @ w["wup"], approximate="tanh") @ w["wdown"]

    times = device_time(forward, a.warmup, a.iters, dev)
    s = summary(times)
    emit(
        {
            "peer": f"torch layer, sdpa {a.backend if dev.type == 'cuda' else 'cpu'}",
            "torch": torch.__version__,
            "device": device_name(dev),
            "emulated": f"rank {a.rank} of a zigzag ring of {a.ring}",
            "layers": a.layers,
            "batch": a.batch,
            "local_tokens": t,
            "seq_len": a.seq_len,
            **s,
        },
        a.json,
    )


def cmd_check(a):
    dev = torch.device("cuda" if torch.cuda.is_available() and not a.cpu else "cpu")
    heads, hd, seq, ring = a.heads, a.head_dim, a.seq_len, a.ring
    width = heads * hd
    gen = torch.Generator(device=dev).manual_seed(1)
    q = ((torch.rand(seq, width, generator=gen, device=dev) * 2 - 1) * 2).to(torch.bfloat16)
    kv = ((torch.rand(seq, 2 * width, generator=gen, device=dev) * 2 - 1) * 2).to(torch.bfloat16)
    chunks = zigzag_chunks(seq, ring)
    # The reference: full causal attention in FP32 on the same BF16 values.
    qf = q.float().view(1, seq, heads, hd).transpose(1, 2)
    kf = kv[:, :width].float().view(1, seq, heads, hd).transpose(1, 2)
    vf = kv[:, width:].float().view(1, seq, heads, hd).transpose(1, 2)
    want = F.scaled_dot_product_attention(qf, kf, vf, is_causal=True)[0].transpose(0, 1).reshape(seq, width)

    def tokens(r):
        return torch.cat([torch.arange(chunks[c][0], chunks[c][0] + chunks[c][1], device=dev) for c in rank_chunks(ring, r)])

    err2, ref2, covered = 0.0, 0.0, 0
    for rank in range(ring):
        mine = tokens(rank)
        got = ring_attention(q[mine], lambda step, _cur, rank=rank: kv[tokens((rank - step) % ring)], chunks, ring, rank, a.backend, heads, hd)
        err2 += (got.float() - want[mine]).pow(2).sum().item()
        ref2 += want[mine].pow(2).sum().item()
        covered += len(mine)
    rel = math.sqrt(err2 / ref2)
    # BF16 partial outputs and probabilities: a relative L2 error of a few 2^-9; a wrong mask,
    # chunk order or merge weight moves it by tens of percent.
    tol = 1e-2
    ok = rel <= tol and covered == seq
    emit(
        {
            "check": f"zigzag ring of {ring} vs full causal attention, seq {seq}, {heads} x {hd}, sdpa {a.backend}",
            "device": str(dev),
            "rel_l2": rel,
            "tol": tol,
            "verdict": "PASS" if ok else "FAIL",
        },
        a.json,
    )
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    at = sub.add_parser("attention", help="SDPA alone on one shape")
    at.add_argument("--heads", type=int, default=32)
    at.add_argument("--head-dim", type=int, default=128)
    at.add_argument("--queries", type=int, default=6250)
    at.add_argument("--keys", type=int, default=6250)
    at.add_argument("--batch", type=int, default=1)
    at.add_argument("--causal", action="store_true")
    at.add_argument("--backward", action="store_true", help="time the backward (dQ, dK, dV) instead")
    at.add_argument("--backends", default="flash,cudnn")
    at.add_argument("--warmup", type=int, default=3)
    at.add_argument("--iters", type=int, default=10)
    at.add_argument("--cpu", action="store_true", help="run on the CPU: checks the logic, measures nothing")
    at.add_argument("--json", action="store_true")
    dc = sub.add_parser("decode", help="SDPA with one query against a long K/V cache")
    dc.add_argument("--heads", type=int, default=64)
    dc.add_argument("--kv-heads", type=int, default=8)
    dc.add_argument("--head-dim", type=int, default=128)
    dc.add_argument("--keys", type=int, default=131072)
    dc.add_argument("--batch", type=int, default=1)
    dc.add_argument("--warmup", type=int, default=3)
    dc.add_argument("--iters", type=int, default=20)
    dc.add_argument("--cpu", action="store_true", help="run on the CPU: checks the logic, measures nothing")
    dc.add_argument("--json", action="store_true")
    ly = sub.add_parser("layer", help="one zigzag ring rank's layers, communication emulated")
    ly.add_argument("--ring", type=int, default=16)
    ly.add_argument("--rank", type=int, default=0)
    ly.add_argument("--seq-len", type=int, default=100_000)
    ly.add_argument("--d-model", type=int, default=4096)
    ly.add_argument("--heads", type=int, default=32)
    ly.add_argument("--mlp", type=int, default=16384)
    ly.add_argument("--layers", type=int, default=1)
    ly.add_argument("--batch", type=int, default=1)
    ly.add_argument("--backend", default="cudnn", choices=["flash", "cudnn"])
    ly.add_argument("--warmup", type=int, default=2)
    ly.add_argument("--iters", type=int, default=5)
    ly.add_argument("--cpu", action="store_true", help="run on the CPU: checks the logic, measures nothing")
    ly.add_argument("--json", action="store_true")
    ck = sub.add_parser("check", help="the peer's ring attention against full causal attention")
    ck.add_argument("--ring", type=int, default=4)
    ck.add_argument("--seq-len", type=int, default=1000)
    ck.add_argument("--heads", type=int, default=2)
    ck.add_argument("--head-dim", type=int, default=128)
    ck.add_argument("--backend", default="flash", choices=["flash", "cudnn"])
    ck.add_argument("--cpu", action="store_true")
    ck.add_argument("--json", action="store_true")
    a = p.parse_args()
    load_torch()
    for name in ("heads", "head_dim", "queries", "keys", "batch", "iters", "ring", "seq_len", "layers", "d_model", "mlp"):
        if getattr(a, name, 1) < 1:
            raise SystemExit(f"torch_peer: --{name.replace('_', '-')} {getattr(a, name)}: must be at least 1")
    if a.cmd == "layer":
        if not 0 <= a.rank < a.ring:
            raise SystemExit(f"torch_peer: --rank {a.rank}: must be below --ring {a.ring}")
        if a.d_model % a.heads:
            raise SystemExit(f"torch_peer: --d-model {a.d_model} must be divisible by --heads {a.heads}")
        if a.seq_len < 2 * a.ring:
            raise SystemExit(f"torch_peer: --seq-len {a.seq_len}: a zigzag ring of {a.ring} needs at least {2 * a.ring} tokens")
    if a.cmd == "decode" and (a.kv_heads < 1 or a.heads % a.kv_heads):
        raise SystemExit(f"torch_peer: --kv-heads {a.kv_heads}: --heads {a.heads} must be a multiple of it")
    if a.cmd in ("attention", "layer", "decode") and not a.cpu and not torch.cuda.is_available():
        raise SystemExit(f"torch_peer {a.cmd}: PyTorch sees no CUDA device here")
    if a.cmd == "attention" and a.causal and a.queries != a.keys:
        raise SystemExit("torch_peer: --causal needs --queries = --keys (a diagonal block, as ringbench bench attention)")
    return {"attention": cmd_attention, "decode": cmd_decode, "layer": cmd_layer, "check": cmd_check}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
