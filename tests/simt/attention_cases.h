// What both SIMT attention checks share (attention_check.cpp: the mma.sync flash kernel and the
// plain one; wgmma_check.cpp: the wgmma + TMA kernel): a case's spans and inputs, two calls into
// the same (o, lse) accumulators as a ring step makes them (keys before the queries, then the
// diagonal, or keys after them, which must merge nothing), FP64 softmax attention to hold the
// result to (rows outside the query span must keep their contents), and the dump of a flash case
// for tests/simt.rs to hold against the kernel's CPU twin. Included after the kernels.
#pragma once
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <functional>
#include <vector>

#include "cases.h"

// A kernel under test: its label, whether it is a flash kernel (P rounded to BF16; its cases are
// dumped for the twin, whose key tile is `tile`), its query rows per block, and one call of it:
// the case's queries against key span ks, merged into o and lse.
struct KernelUnderTest {
    const char* label;
    bool flash;
    int bm, tile;
    std::function<void(const Case& c, const Span& ks, const Bf16s& q, const Bf16s& kv, Floats& o, Floats& lse)> call;
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float uniform3() { // in [-3, 3), BF16-exact
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    const float u = float((rng_state >> 40) & 0xffffff) / float(1 << 24);
    return __bfloat162float(__float2bfloat16_rn(6.0f * u - 3.0f));
}

// With SIMT_DUMP=PREFIX, each flash case's inputs and the kernel's outputs go to PREFIX-N.bin, so
// that tests/simt.rs can hold them to the CPU twin of the kernel (src/backend/flash_twin.rs):
// 16 int32 (d, heads, rows, the three spans' row0, len, pos0, causal, bm, kv_heads, the twin's
// key tile), then q and kv as BF16 bits, o and lse as FP32, little-endian.
static int dumped = 0;
static void dump(const Case& c, const KernelUnderTest& k, const Bf16s& q, const Bf16s& kv, const Floats& o, const Floats& lse) {
    const char* prefix = getenv("SIMT_DUMP");
    if (!prefix || !k.flash) return;
    char path[512];
    snprintf(path, sizeof path, "%s-%d.bin", prefix, dumped++);
    FILE* f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    const int32_t head[16] = {c.d, c.heads, c.rows, c.q.row0, c.q.len, c.q.pos0, c.first.row0, c.first.len, c.first.pos0,
                              c.second.row0, c.second.len, c.second.pos0, c.causal ? 1 : 0, k.bm, c.kvh(), k.tile};
    bool ok = fwrite(head, sizeof head, 1, f) == 1;
    ok &= fwrite(q.data(), sizeof(__nv_bfloat16), q.size(), f) == q.size();
    ok &= fwrite(kv.data(), sizeof(__nv_bfloat16), kv.size(), f) == kv.size();
    ok &= fwrite(o.data(), sizeof(float), o.size(), f) == o.size();
    ok &= fwrite(lse.data(), sizeof(float), lse.size(), f) == lse.size();
    if (fclose(f) != 0 || !ok) {
        fprintf(stderr, "%s: write failed\n", path);
        exit(1);
    }
}

// One case through one kernel, against FP64 attention; prints one line, returns whether it passed.
static bool run_case(const Case& c, const KernelUnderTest& k) {
    const int w = c.heads * c.d, kvw = c.kvh() * c.d, group = c.heads / c.kvh();
    Bf16s q(size_t(c.rows) * w), kv(size_t(c.rows) * 2 * kvw);
    double max_v = 0.0;
    for (auto& x : q) x = __float2bfloat16_rn(uniform3());
    for (auto& x : kv) {
        x = __float2bfloat16_rn(uniform3());
        max_v = fmax(max_v, fabs(__bfloat162float(x)));
    }
    // Query rows start empty (o = 0, lse = -inf); the others hold a sentinel that must survive.
    const float sentinel = 7.25f;
    Floats o(size_t(c.rows) * w, sentinel), lse(size_t(c.rows) * c.heads, sentinel);
    for (int r = c.q.row0; r < c.q.row0 + c.q.len; r++) {
        for (int j = 0; j < w; j++) o[size_t(r) * w + j] = 0.0f;
        for (int h = 0; h < c.heads; h++) lse[size_t(r) * c.heads + h] = -INFINITY;
    }
    k.call(c, c.first, q, kv, o, lse);
    k.call(c, c.second, q, kv, o, lse);
    dump(c, k, q, kv, o, lse);

    // Flash: P rounded to BF16, at most 2^-9 max|V| per output, doubled. Plain: FP32 throughout.
    const double o_tol = k.flash ? 2.0 * max_v / 512.0 : 2e-4 * max_v;
    double o_err = 0.0, lse_err = 0.0;
    bool ok = true;
    for (int r = 0; r < c.rows; r++) {
        const bool is_query = r >= c.q.row0 && r < c.q.row0 + c.q.len;
        for (int h = 0; h < c.heads; h++) {
            const float got_lse = lse[size_t(r) * c.heads + h];
            const float* got_o = &o[size_t(r) * w + h * c.d];
            if (!is_query) {
                ok &= got_lse == sentinel;
                for (int j = 0; j < c.d; j++) ok &= got_o[j] == sentinel;
                continue;
            }
            const int qpos = c.q.pos0 + (r - c.q.row0);
            std::vector<double> scores, out(c.d, 0.0);
            std::vector<int> key_rows;
            for (const Span* ks : {&c.first, &c.second}) {
                for (int j = 0; j < ks->len; j++) {
                    if (c.causal && ks->pos0 + j > qpos) continue;
                    const int kr = ks->row0 + j;
                    double s = 0.0;
                    for (int e = 0; e < c.d; e++)
                        s += double(__bfloat162float(q[size_t(r) * w + h * c.d + e])) *
                             double(__bfloat162float(kv[size_t(kr) * 2 * kvw + (h / group) * c.d + e]));
                    scores.push_back(s / sqrt(double(c.d)));
                    key_rows.push_back(kr);
                }
            }
            if (scores.empty()) { // no visible key: the accumulators keep the empty state exactly
                ok &= got_lse == -INFINITY;
                for (int j = 0; j < c.d; j++) ok &= got_o[j] == 0.0f;
                continue;
            }
            double m = -INFINITY, z = 0.0;
            for (double s : scores) m = fmax(m, s);
            for (size_t i = 0; i < scores.size(); i++) {
                const double p = exp(scores[i] - m);
                z += p;
                for (int e = 0; e < c.d; e++)
                    out[e] += p * double(__bfloat162float(kv[size_t(key_rows[i]) * 2 * kvw + kvw + (h / group) * c.d + e]));
            }
            const double want_lse = m + log(z);
            const double le = fabs(double(got_lse) - want_lse);
            lse_err = fmax(lse_err, le);
            ok &= le <= 2e-4 * fmax(fabs(want_lse), 1.0); // NaN fails
            for (int e = 0; e < c.d; e++) {
                const double oe = fabs(double(got_o[e]) - out[e] / z);
                o_err = fmax(o_err, oe);
                ok &= oe <= o_tol; // NaN fails
            }
        }
    }
    char name[160];
    snprintf(name, sizeof name, "%s%s", k.label, c.name);
    printf("%-72s o max abs %.3e (tol %.2e), lse max abs %.3e: %s\n", name, o_err, o_tol, lse_err, ok ? "PASS" : "FAIL");
    return ok;
}
