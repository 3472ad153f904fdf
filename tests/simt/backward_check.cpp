// The backward kernels' own sources (kernels/flash_backward.cu on mma.sync, attention_backward.cu
// for other head dims, backward.cu's row and element-wise ops), run on the CPU through the SIMT
// stand-in, each block's threads as fibers, against FP64. An attention case is two calls into the
// same (dq, dkv) accumulators, as a ring's steps make them: the queries against a block of earlier
// keys, then against the diagonal (or keys after them, which must add nothing), from the forward's
// final lse over both (computed here in FP64, rounded to FP32 as the backend keeps it) and
// delta = rowsum(dO O). Accumulator rows outside the spans must keep a sentinel; rows inside start
// at 0.5, so what is added is checked, not overwritten. Tolerances are derived per element: the
// flash kernel rounds P and dS to BF16 (a relative error of at most 2^-8 each), so |error| <=
// 2 (2^-8 + FP32) x the sum of |terms| of that element; the plain kernel rounds nothing but FP32.
// With SIMT_DUMP=PREFIX each attention case is dumped (PREFIX-N.bin) for tests/simt.rs to hold the
// kernel to its CPU twin within the same bound. Built and run by tests/simt.rs, copies landing late
// and early (SIMT_COPY=eager).
#define RINGBENCH_SIMT
#include "cuda_bf16.h"
#include "../../kernels/flash_backward.cu"
#include "../../kernels/attention_backward.cu"
#include "../../kernels/backward.cu"

#include <stdio.h>

#include "cases.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float uniform(float scale) { // in [-scale, scale), BF16-exact
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    const float u = float((rng_state >> 40) & 0xffffff) / float(1 << 24);
    return __bfloat162float(__float2bfloat16_rn(scale * (2.0f * u - 1.0f)));
}
static double f(__nv_bfloat16 v) { return __bfloat162float(v); }

static int failures = 0;
static int dumped = 0;

// The bound's FP32 part: a sum of n products in FP32 (and the exponentials' few ulps).
static double fp32_slack(int n) { return (n + 8) * ldexp(1.0, -24); }

static void launch_case(const Case& c, bool flash, const Span& ks, const Bf16s& q, const Bf16s& kv, const Bf16s& d_o, const Floats& lse,
                        const Floats& delta, Floats& dq, Floats& dkv) {
    if (c.q.len == 0 || ks.len == 0) return; // the backend launches nothing
    const float scale = 1.0f / sqrtf(float(c.d));
    if (flash) {
        const size_t smem = c.d == 64 ? FbSmem<64>::BYTES : FbSmem<128>::BYTES;
        launch_fibers((ks.len + FB_BN - 1) / FB_BN, c.kvh(), FB_THREADS, smem, "flash_backward", [&] {
            (c.d == 64 ? flash_backward_d64_bf16 : flash_backward_d128_bf16)(q.data(), kv.data(), d_o.data(), lse.data(), delta.data(),
                                                                             dq.data(), dkv.data(), c.heads, c.kvh(), c.q.row0, c.q.len,
                                                                             c.q.pos0, ks.row0, ks.len, ks.pos0, c.causal, scale);
        });
        return;
    }
    launch_fibers((c.q.len + WARPS - 1) / WARPS, c.heads, 32 * WARPS, "attention_backward_dq", [&] {
        attention_backward_dq_bf16(q.data(), kv.data(), d_o.data(), lse.data(), delta.data(), dq.data(), dkv.data(), c.heads, c.kvh(), c.d,
                                   c.q.row0, c.q.len, c.q.pos0, ks.row0, ks.len, ks.pos0, c.causal, scale);
    });
    launch_fibers((ks.len + WARPS - 1) / WARPS, c.kvh(), 32 * WARPS, "attention_backward_dkv", [&] {
        attention_backward_dkv_bf16(q.data(), kv.data(), d_o.data(), lse.data(), delta.data(), dq.data(), dkv.data(), c.heads, c.kvh(), c.d,
                                    c.q.row0, c.q.len, c.q.pos0, ks.row0, ks.len, ks.pos0, c.causal, scale);
    });
}

// With SIMT_DUMP=PREFIX: 16 int32 (d, heads, rows, the three spans' row0, len, pos0, causal, flash,
// kv_heads, 0), then q, kv, d_o as BF16 bits, lse, delta, the accumulators' start, the kernel's dq
// and dkv, and the bounds of dq and dkv as FP32, little-endian.
static void dump(const Case& c, bool flash, const std::vector<std::pair<const void*, size_t>>& parts) {
    const char* prefix = getenv("SIMT_DUMP");
    if (!prefix) return;
    char path[512];
    snprintf(path, sizeof path, "%s-%d.bin", prefix, dumped++);
    FILE* out = fopen(path, "wb");
    const int32_t head[16] = {c.d, c.heads, c.rows, c.q.row0, c.q.len, c.q.pos0, c.first.row0, c.first.len, c.first.pos0,
                              c.second.row0, c.second.len, c.second.pos0, c.causal, flash, c.kvh(), 0};
    bool ok = out && fwrite(head, sizeof head, 1, out) == 1;
    for (auto [p, n] : parts) ok &= out && fwrite(p, 1, n, out) == n;
    if (!out || fclose(out) != 0 || !ok) {
        fprintf(stderr, "%s: write failed\n", path);
        exit(1);
    }
}

static void attention_case(const Case& c, bool flash) {
    const int w = c.heads * c.d, kvw = c.kvh() * c.d, group = c.heads / c.kvh();
    const double scale = 1.0 / sqrt(double(c.d));
    Bf16s q(size_t(c.rows) * w), kv(size_t(c.rows) * 2 * kvw), d_o(size_t(c.rows) * w);
    for (auto& x : q) x = __float2bfloat16_rn(uniform(3.0f));
    for (auto& x : kv) x = __float2bfloat16_rn(uniform(3.0f));
    for (auto& x : d_o) x = __float2bfloat16_rn(uniform(1.0f));
    const auto at_q = [&](int r, int h, int e) { return size_t(r) * w + h * c.d + e; };
    const auto at_k = [&](int r, int g, int e) { return size_t(r) * 2 * kvw + g * c.d + e; };
    const auto visible = [&](int qr, int kpos) { return !c.causal || kpos <= c.q.pos0 + (qr - c.q.row0); };
    const auto score = [&](int qr, int h, int kr) {
        double s = 0.0;
        for (int e = 0; e < c.d; e++) s += f(q[at_q(qr, h, e)]) * f(kv[at_k(kr, h / group, e)]);
        return s * scale;
    };
    // dP = dO V^T and the sum of its terms' magnitudes (what bounds its FP32 error).
    const auto dprob = [&](int qr, int h, int kr) {
        double s = 0.0, mag = 0.0;
        for (int e = 0; e < c.d; e++) {
            const double t = f(d_o[at_q(qr, h, e)]) * f(kv[at_k(kr, h / group, e) + kvw]);
            s += t;
            mag += fabs(t);
        }
        return std::make_pair(s, mag);
    };
    // The forward in FP64 over both key spans: lse (then kept as FP32) and delta = rowsum(dO O).
    Floats lse(size_t(c.rows) * c.heads, 11.5f), delta(size_t(c.rows) * c.heads, -9.25f);
    for (int r = c.q.row0; r < c.q.row0 + c.q.len; r++)
        for (int h = 0; h < c.heads; h++) {
            double m = -INFINITY, z = 0.0;
            std::vector<double> o(c.d, 0.0);
            for (const Span* ks : {&c.first, &c.second})
                for (int j = 0; j < ks->len; j++)
                    if (visible(r, ks->pos0 + j)) m = fmax(m, score(r, h, ks->row0 + j));
            for (const Span* ks : {&c.first, &c.second})
                for (int j = 0; j < ks->len; j++)
                    if (visible(r, ks->pos0 + j)) {
                        const double p = exp(score(r, h, ks->row0 + j) - m);
                        z += p;
                        for (int e = 0; e < c.d; e++) o[e] += p * f(kv[at_k(ks->row0 + j, h / group, e) + kvw]);
                    }
            double dl = 0.0;
            for (int e = 0; e < c.d; e++) dl += z > 0.0 ? o[e] / z * f(d_o[at_q(r, h, e)]) : 0.0;
            lse[size_t(r) * c.heads + h] = z > 0.0 ? float(m + log(z)) : -INFINITY;
            delta[size_t(r) * c.heads + h] = float(dl);
        }
    // The backward in FP64 from those FP32 values, with each element's sum of |terms|.
    const float sentinel = 7.25f, start = 0.5f;
    Floats dq(size_t(c.rows) * w, sentinel), dkv(size_t(c.rows) * 2 * kvw, sentinel);
    std::vector<double> want_dq(dq.size(), 0.0), want_dkv(dkv.size(), 0.0), mag_dq(dq.size(), 0.0), mag_dkv(dkv.size(), 0.0);
    std::vector<int> n_dq(dq.size(), 0), n_dkv(dkv.size(), 0);
    for (int r = c.q.row0; r < c.q.row0 + c.q.len; r++)
        for (int j = 0; j < w; j++) dq[size_t(r) * w + j] = start;
    for (const Span* ks : {&c.first, &c.second})
        for (int r = ks->row0; r < ks->row0 + ks->len; r++)
            for (int j = 0; j < 2 * kvw; j++) dkv[size_t(r) * 2 * kvw + j] = start;
    const Floats dq0 = dq, dkv0 = dkv;
    for (const Span* ks : {&c.first, &c.second})
        for (int r = c.q.row0; r < c.q.row0 + c.q.len; r++)
            for (int h = 0; h < c.heads; h++) {
                const double l = lse[size_t(r) * c.heads + h], dl = delta[size_t(r) * c.heads + h];
                if (l == -INFINITY) continue;
                for (int j = 0; j < ks->len; j++) {
                    const int kr = ks->row0 + j;
                    if (!visible(r, ks->pos0 + j)) continue;
                    const auto [dp, dp_mag] = dprob(r, h, kr);
                    const double p = exp(score(r, h, kr) - l), ds = p * (dp - dl);
                    const double ds_mag = p * (dp_mag + fabs(dl));
                    for (int e = 0; e < c.d; e++) {
                        const size_t iq = at_q(r, h, e), ik = at_k(kr, h / group, e), iv = ik + kvw;
                        want_dq[iq] += scale * ds * f(kv[ik]);
                        mag_dq[iq] += scale * ds_mag * fabs(f(kv[ik]));
                        n_dq[iq]++;
                        want_dkv[ik] += scale * ds * f(q[iq]);
                        mag_dkv[ik] += scale * ds_mag * fabs(f(q[iq]));
                        n_dkv[ik]++;
                        want_dkv[iv] += p * f(d_o[iq]);
                        mag_dkv[iv] += p * fabs(f(d_o[iq]));
                        n_dkv[iv]++;
                    }
                }
            }
    launch_case(c, flash, c.first, q, kv, d_o, lse, delta, dq, dkv);
    launch_case(c, flash, c.second, q, kv, d_o, lse, delta, dq, dkv);

    const double rounding = flash ? ldexp(1.0, -8) : 0.0;
    Floats bound_dq(dq.size()), bound_dkv(dkv.size());
    double worst = 0.0, worst_ratio = 0.0;
    bool ok = true, any = false;
    const auto check = [&](const Floats& got, const Floats& before, const std::vector<double>& want, const std::vector<double>& mag,
                           const std::vector<int>& n, Floats& bound) {
        for (size_t i = 0; i < got.size(); i++) {
            // The accumulator's start plus the gradient: one more FP32 rounding of the sum.
            const double b = 2.0 * (rounding + fp32_slack(n[i] + c.d)) * mag[i] + ldexp(fabs(double(before[i])) + mag[i], -23);
            bound[i] = float(b);
            if (before[i] == sentinel) {
                ok &= got[i] == sentinel;
                continue;
            }
            const double err = fabs(double(got[i]) - double(before[i]) - want[i]);
            ok &= err <= b; // NaN fails
            any |= mag[i] > 0.0;
            worst = fmax(worst, err);
            if (b > 0.0) worst_ratio = fmax(worst_ratio, err / b);
        }
    };
    check(dq, dq0, want_dq, mag_dq, n_dq, bound_dq);
    check(dkv, dkv0, want_dkv, mag_dkv, n_dkv, bound_dkv);
    const bool expect_any = strstr(c.name, "nothing") == nullptr;
    ok &= any == expect_any; // a case that should move the gradients does
    dump(c, flash, {{q.data(), q.size() * 2}, {kv.data(), kv.size() * 2}, {d_o.data(), d_o.size() * 2}, {lse.data(), lse.size() * 4},
                    {delta.data(), delta.size() * 4}, {dq0.data(), dq0.size() * 4}, {dkv0.data(), dkv0.size() * 4},
                    {dq.data(), dq.size() * 4}, {dkv.data(), dkv.size() * 4}, {bound_dq.data(), bound_dq.size() * 4},
                    {bound_dkv.data(), bound_dkv.size() * 4}});
    printf("%s%-68s max abs %.3e (%3.0f%% of its bound): %s\n", flash ? "flash " : "plain ", c.name, worst, 100.0 * worst_ratio,
           ok ? "PASS" : "FAIL");
    failures += !ok;
}

static void report(const char* name, bool ok, double err) {
    printf("%-74s max abs %.3e: %s\n", name, err, ok ? "PASS" : "FAIL");
    failures += !ok;
}

// One BF16 rounding at the larger magnitude of a and b, plus an FP32 slack.
static double bf16_tol(double a, double b) {
    const double x = fmax(fabs(a), fabs(b));
    return x == 0.0 ? 1e-30 : ldexp(1.0, ilogb(x) - 8) + 1e-6 * x;
}

// RMSNorm's backward over rows of 300 columns (a partial last warp) and 70 rows (three blocks of
// RMS_ROWS, the last partial), dx added to its start, dgain summed over blocks by atomics.
static void rms_norm_backward_case() {
    const int rows = 70, cols = 300;
    Bf16s x(rows * cols), gain(cols), dy(rows * cols), dx(rows * cols);
    for (auto& v : x) v = __float2bfloat16_rn(uniform(2.0f));
    for (auto& v : gain) v = __float2bfloat16_rn(uniform(1.5f));
    for (auto& v : dy) v = __float2bfloat16_rn(uniform(1.0f));
    for (auto& v : dx) v = __float2bfloat16_rn(uniform(0.5f));
    const Bf16s dx0 = dx;
    Floats dgain(cols, 0.25f);
    launch_fibers((rows + RMS_ROWS - 1) / RMS_ROWS, 1, BLOCK, cols * sizeof(float), "rms_norm_backward", [&] {
        rms_norm_backward_bf16(x.data(), gain.data(), dy.data(), dx.data(), dgain.data(), rows, cols);
    });
    double err = 0.0, gerr = 0.0;
    bool ok = true;
    std::vector<double> want_g(cols, 0.0), mag_g(cols, 0.0);
    for (int r = 0; r < rows; r++) {
        double ss = 0.0, dot = 0.0;
        for (int j = 0; j < cols; j++) {
            ss += f(x[r * cols + j]) * f(x[r * cols + j]);
            dot += f(gain[j]) * f(dy[r * cols + j]) * f(x[r * cols + j]);
        }
        const double inv = 1.0 / sqrt(ss / cols + 1e-5), k = inv * inv * inv * dot / cols;
        for (int j = 0; j < cols; j++) {
            const double g = inv * f(gain[j]) * f(dy[r * cols + j]) - f(x[r * cols + j]) * k;
            const double want = f(dx0[r * cols + j]) + g, got = f(dx[r * cols + j]);
            const double e = fabs(got - want);
            ok &= e <= bf16_tol(want, fabs(f(dx0[r * cols + j])) + fabs(g)) + 1e-5 * (fabs(inv * f(gain[j]) * f(dy[r * cols + j])) + fabs(f(x[r * cols + j]) * k));
            err = fmax(err, e);
            want_g[j] += f(dy[r * cols + j]) * f(x[r * cols + j]) * inv;
            mag_g[j] += fabs(f(dy[r * cols + j]) * f(x[r * cols + j]) * inv);
        }
    }
    for (int j = 0; j < cols; j++) {
        const double e = fabs(dgain[j] - 0.25 - want_g[j]);
        ok &= e <= fp32_slack(rows + cols) * (mag_g[j] + 0.25) * 4.0;
        gerr = fmax(gerr, e);
    }
    report("rms_norm_backward: 70 rows x 300, dx added, dgain over 3 blocks", ok, fmax(err, gerr));
}

static void elementwise_cases() {
    const int rows = 5, ff = 77, n = rows * ff;
    Bf16s pre(n), dy(n), gate_up(2 * n), dout(n), dgu(2 * n);
    for (auto& v : pre) v = __float2bfloat16_rn(uniform(4.0f));
    for (auto& v : dy) v = __float2bfloat16_rn(uniform(1.0f));
    for (auto& v : gate_up) v = __float2bfloat16_rn(uniform(4.0f));
    for (auto& v : dout) v = __float2bfloat16_rn(uniform(1.0f));
    const Bf16s dy0 = dy;
    const unsigned blocks = (n + BLOCK - 1) / BLOCK;
    launch_fibers(blocks, 1, BLOCK, "gelu_backward", [&] { gelu_backward_bf16(pre.data(), dy.data(), n); });
    launch_fibers(blocks, 1, BLOCK, "swiglu_backward", [&] { swiglu_backward_bf16(gate_up.data(), dout.data(), dgu.data(), rows, ff); });
    double ge = 0.0, se = 0.0;
    bool gok = true, sok = true;
    for (int i = 0; i < n; i++) {
        const double z = f(pre[i]), kk = sqrt(2.0 / M_PI), t = tanh(kk * (z + 0.044715 * z * z * z));
        const double want = f(dy0[i]) * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * kk * (1.0 + 3.0 * 0.044715 * z * z));
        const double e = fabs(f(dy[i]) - want);
        gok &= e <= bf16_tol(want, want) + 1e-6 * fabs(f(dy0[i]));
        ge = fmax(ge, e);
        const int r = i / ff, j = i % ff;
        const double a = f(gate_up[r * 2 * ff + j]), b = f(gate_up[r * 2 * ff + ff + j]), g = f(dout[i]);
        const double sg = 1.0 / (1.0 + exp(-a));
        const double wa = g * b * sg * (1.0 + a * (1.0 - sg)), wb = g * a * sg;
        const double ea = fabs(f(dgu[r * 2 * ff + j]) - wa), eb = fabs(f(dgu[r * 2 * ff + ff + j]) - wb);
        sok &= ea <= bf16_tol(wa, wa) + 1e-6 * fabs(g * b) && eb <= bf16_tol(wb, wb) + 1e-6 * fabs(g * a);
        se = fmax(se, fmax(ea, eb));
    }
    report("gelu_backward: 385 elements, dy *= GELU'(pre)", gok, ge);
    report("swiglu_backward: 5 rows x 77, [dout up silu'(gate) | dout silu(gate)]", sok, se);

    // delta over 3 heads of 40 (a row's heads side by side), and add_f32.
    const int heads = 3, hd = 40;
    Bf16s o(rows * heads * hd), dov(rows * heads * hd);
    for (auto& v : o) v = __float2bfloat16_rn(uniform(2.0f));
    for (auto& v : dov) v = __float2bfloat16_rn(uniform(2.0f));
    Floats delta(rows * heads, -1.0f), x(n), y(n);
    for (auto& v : x) v = uniform(8.0f) + uniform(1.0f) / 256.0f;
    for (auto& v : y) v = uniform(8.0f);
    const Floats x0 = x;
    launch_fibers(1, 1, BLOCK, "attention_delta", [&] { attention_delta_f32(o.data(), dov.data(), delta.data(), rows, heads, hd); });
    launch_fibers(blocks, 1, BLOCK, "add_f32", [&] { add_f32(x.data(), y.data(), n); });
    double de = 0.0;
    bool dok = true, aok = true;
    for (int i = 0; i < rows * heads; i++) {
        double want = 0.0, mag = 0.0;
        for (int e = 0; e < hd; e++) {
            want += f(o[i * hd + e]) * f(dov[i * hd + e]);
            mag += fabs(f(o[i * hd + e]) * f(dov[i * hd + e]));
        }
        const double e = fabs(delta[i] - want);
        dok &= e <= fp32_slack(hd) * mag;
        de = fmax(de, e);
    }
    for (int i = 0; i < n; i++) aok &= x[i] == x0[i] + y[i];
    report("attention_delta: 5 rows x 3 heads of 40, rowsum(dO O) per head", dok, de);
    report("add_f32: 385 elements, exactly the FP32 sum", aok, 0.0);
}

int main() {
    const Case cases[] = {
        // 80 queries after 70 earlier keys, then the diagonal: two key tiles, the first of 6
        // keys; query tiles that end mid-way; the diagonal crossing a tile.
        {"d128, 1 head, 80 q, 70 earlier keys + diagonal, causal", 128, 1, 150, {70, 80, 1070}, {0, 70, 1000}, {70, 80, 1070}, true},
        {"d64, 2 heads, 48 q, 49 earlier keys + diagonal, full", 64, 2, 97, {49, 48, 1049}, {0, 49, 1000}, {49, 48, 1049}, false},
        // Keys after every query: their calls add nothing (the diagonal's do).
        {"d128, 1 head, 65 q, diagonal + keys after them, causal", 128, 1, 130, {0, 65, 0}, {0, 65, 0}, {65, 65, 5000}, true},
        {"d64, 1 head, 1 query, its own key, causal", 64, 1, 1, {0, 1, 7}, {0, 1, 7}, {0, 1, 7}, true},
        // Queries 5 positions behind their keys' start: the diagonal off the tile grid, skipped
        // query tiles, a last key tile of 7 keys.
        {"d128, 2 heads, 130 q at 5.., 135 keys at 0.., causal", 128, 2, 135, {0, 130, 5}, {0, 0, 0}, {0, 135, 0}, true},
        // Only keys after every query: lse = -inf, nothing added anywhere.
        {"d64, 1 head, 20 q, only keys after them (nothing), causal", 64, 1, 40, {0, 20, 0}, {20, 20, 500}, {0, 0, 0}, true},
        // Grouped K/V heads: dK and dV sum over the query heads of a K/V head.
        {"d128, 4 heads / 1 K/V, 80 q, 70 earlier keys + diagonal, causal", 128, 4, 150, {70, 80, 1070}, {0, 70, 1000}, {70, 80, 1070}, true, 1},
        {"d64, 4 heads / 2 K/V, 48 q, 49 earlier keys + diagonal, full", 64, 4, 97, {49, 48, 1049}, {0, 49, 1000}, {49, 48, 1049}, false, 2},
        // The plain kernels (other head dims).
        {"d32, 2 heads, 13 q, 20 earlier keys + diagonal, causal", 32, 2, 33, {20, 13, 1020}, {0, 20, 1000}, {20, 13, 1020}, true},
        {"d80, 1 head, 9 q, keys after them + diagonal, causal", 80, 1, 18, {0, 9, 0}, {9, 9, 900}, {0, 9, 0}, true},
        {"d48, 1 head, 7 q, 9 keys, full", 48, 1, 16, {9, 7, 40}, {0, 9, 0}, {9, 0, 0}, false},
        {"d32, 4 heads / 1 K/V, 13 q, 20 earlier keys + diagonal, causal", 32, 4, 33, {20, 13, 1020}, {0, 20, 1000}, {20, 13, 1020}, true, 1},
    };
    for (const Case& c : cases) attention_case(c, c.d == 64 || c.d == 128);
    rms_norm_backward_case();
    elementwise_cases();
    printf("backward kernels on the SIMT emulation: %s\n", failures == 0 ? "PASS" : "FAIL");
    return failures == 0 ? 0 : 1;
}
