// The attention kernels' own sources (the flash kernel, and the plain one that serves other head
// dims), run on the CPU through the SIMT stand-in (cuda_bf16.h here), against FP64 softmax
// attention. Each case makes two calls into the same (o, lse)
// accumulators, as a ring step does: keys before the queries, then the diagonal block (or keys
// after them, which must merge nothing). Rows outside the query span must keep their contents.
// Prints one line per case; exit status 1 on any failure. Built and run by tests/simt.rs.
#define RINGBENCH_SIMT
#include "cuda_bf16.h"
#include "../../kernels/flash_attention.cu"
#include "../../kernels/attention.cu"

#include <stdio.h>
#include <stdlib.h>

struct Span {
    int row0, len, pos0;
};

struct Case {
    const char* name;
    int d, heads, rows;
    Span q, first, second;
    bool causal;
    int kv_heads; // 0: one per query head (multi-head attention)
    int kvh() const { return kv_heads ? kv_heads : heads; }
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float uniform3() { // in [-3, 3), BF16-exact
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    const float u = float((rng_state >> 40) & 0xffffff) / float(1 << 24);
    return __bfloat162float(__float2bfloat16_rn(6.0f * u - 3.0f));
}

static void call(const Case& c, int bm, const Span& ks, const std::vector<__nv_bfloat16>& q, const std::vector<__nv_bfloat16>& kv,
                 std::vector<float>& o, std::vector<float>& lse) {
    const float scale = 1.0f / sqrtf(float(c.d));
    if (c.d != 64 && c.d != 128) { // the plain kernel: one warp per query row, as the backend launches it
        const unsigned blocks = (c.q.len + WARPS - 1) / WARPS;
        launch(blocks, c.heads, 32 * WARPS, [&] {
            attention_bf16(q.data(), kv.data(), o.data(), lse.data(), c.heads, c.kvh(), c.d, c.q.row0, c.q.len, c.q.pos0, ks.row0, ks.len,
                           ks.pos0, c.causal, scale);
        });
        return;
    }
    const unsigned blocks = (c.q.len + bm - 1) / bm;
    launch(blocks, c.heads, 2 * bm, [&] {
        auto kernel = c.d == 64 ? (bm == 64 ? flash_attention_d64_m64_bf16 : flash_attention_d64_m128_bf16)
                                : (bm == 64 ? flash_attention_d128_m64_bf16 : flash_attention_d128_m128_bf16);
        kernel(q.data(), kv.data(), o.data(), lse.data(), c.heads, c.kvh(), c.q.row0, c.q.len, c.q.pos0, ks.row0, ks.len, ks.pos0,
               c.causal, scale);
    });
}

// With SIMT_DUMP=PREFIX, each flash case's inputs and the kernel's outputs go to PREFIX-N.bin, so
// that tests/simt.rs can hold them to the CPU twin of the kernel (src/backend/flash_twin.rs):
// 15 int32 (d, heads, rows, the three spans' row0, len, pos0, causal, bm, kv_heads), then q and kv
// as BF16 bits, o and lse as FP32, little-endian.
static int dumped = 0;
static void dump(const Case& c, int bm, const std::vector<__nv_bfloat16>& q, const std::vector<__nv_bfloat16>& kv,
                 const std::vector<float>& o, const std::vector<float>& lse) {
    const char* prefix = getenv("SIMT_DUMP");
    if (!prefix || (c.d != 64 && c.d != 128)) return;
    char path[512];
    snprintf(path, sizeof path, "%s-%d.bin", prefix, dumped++);
    FILE* f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    const int32_t head[13] = {c.d, c.heads, c.rows, c.q.row0, c.q.len, c.q.pos0, c.first.row0, c.first.len, c.first.pos0,
                              c.second.row0, c.second.len, c.second.pos0, c.causal ? 1 : 0};
    const int32_t tail[2] = {bm, c.kvh()};
    bool ok = fwrite(head, sizeof head, 1, f) == 1 && fwrite(tail, sizeof tail, 1, f) == 1;
    ok &= fwrite(q.data(), sizeof(__nv_bfloat16), q.size(), f) == q.size();
    ok &= fwrite(kv.data(), sizeof(__nv_bfloat16), kv.size(), f) == kv.size();
    ok &= fwrite(o.data(), sizeof(float), o.size(), f) == o.size();
    ok &= fwrite(lse.data(), sizeof(float), lse.size(), f) == lse.size();
    if (fclose(f) != 0 || !ok) {
        fprintf(stderr, "%s: write failed\n", path);
        exit(1);
    }
}

// bm: query rows per flash block (64 or 128); ignored by the plain kernel.
static bool run_case(const Case& c, int bm) {
    const int w = c.heads * c.d, kvw = c.kvh() * c.d, group = c.heads / c.kvh();
    std::vector<__nv_bfloat16> q(size_t(c.rows) * w), kv(size_t(c.rows) * 2 * kvw);
    double max_v = 0.0;
    for (auto& x : q) x = __float2bfloat16_rn(uniform3());
    for (auto& x : kv) {
        x = __float2bfloat16_rn(uniform3());
        max_v = fmax(max_v, fabs(__bfloat162float(x)));
    }
    // Query rows start empty (o = 0, lse = -inf); the others hold a sentinel that must survive.
    const float sentinel = 7.25f;
    std::vector<float> o(size_t(c.rows) * w, sentinel), lse(size_t(c.rows) * c.heads, sentinel);
    for (int r = c.q.row0; r < c.q.row0 + c.q.len; r++) {
        for (int j = 0; j < w; j++) o[size_t(r) * w + j] = 0.0f;
        for (int h = 0; h < c.heads; h++) lse[size_t(r) * c.heads + h] = -INFINITY;
    }
    call(c, bm, c.first, q, kv, o, lse);
    call(c, bm, c.second, q, kv, o, lse);
    dump(c, bm, q, kv, o, lse);

    // Flash: P rounded to BF16, at most 2^-9 max|V| per output, doubled. Plain: FP32 throughout.
    const bool flash = c.d == 64 || c.d == 128;
    const double o_tol = flash ? 2.0 * max_v / 512.0 : 2e-4 * max_v;
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
                ok &= oe <= o_tol;
            }
        }
    }
    char name[128];
    snprintf(name, sizeof name, "%s%s", flash ? (bm == 64 ? "m64 " : "m128 ") : "", c.name);
    printf("%-64s o max abs %.3e (tol %.2e), lse max abs %.3e: %s\n", name, o_err, o_tol, lse_err, ok ? "PASS" : "FAIL");
    return ok;
}

int main() {
    const Case cases[] = {
        // 80 queries after 70 earlier keys, then the diagonal: two 64-row query blocks, key tiles
        // that end mid-tile, the causal mask crossing the first query block's tile.
        {"d128, 1 head, 80 q, 70 earlier keys + diagonal, causal", 128, 1, 150, {70, 80, 1070}, {0, 70, 1000}, {70, 80, 1070}, true},
        {"d64, 2 heads, 48 q, 49 earlier keys + diagonal, full", 64, 2, 97, {49, 48, 1049}, {0, 49, 1000}, {49, 48, 1049}, false},
        // The second block of keys comes after every query: nothing may merge.
        {"d128, 1 head, 65 q, diagonal + keys after them, causal", 128, 1, 130, {0, 65, 0}, {0, 65, 0}, {65, 65, 5000}, true},
        {"d64, 1 head, 1 query, its own key, causal", 64, 1, 1, {0, 1, 7}, {0, 1, 7}, {0, 1, 7}, true},
        // Queries 5 positions behind their keys' start: the diagonal off the tile grid, some
        // queries (the first 5 query positions see keys 0..pos) and a last tile of 7 keys.
        {"d128, 2 heads, 130 q at 5.., 135 keys at 0.., causal", 128, 2, 135, {0, 130, 5}, {0, 0, 0}, {0, 135, 0}, true},
        // The plain kernel (head dims without a flash instance).
        {"plain d32, 2 heads, 13 q, 20 earlier keys + diagonal, causal", 32, 2, 33, {20, 13, 1020}, {0, 20, 1000}, {20, 13, 1020}, true},
        {"plain d80, 1 head, 9 q, keys after them + diagonal, causal", 80, 1, 18, {0, 9, 0}, {9, 9, 900}, {0, 9, 0}, true},
        {"plain d48, 1 head, 7 q, 9 keys, full", 48, 1, 16, {9, 7, 40}, {0, 9, 0}, {9, 0, 0}, false},
        // Grouped K/V heads: one K/V head shared by every query head (MQA), and two for four.
        {"d128, 4 heads / 1 K/V, 80 q, 70 earlier keys + diagonal, causal", 128, 4, 150, {70, 80, 1070}, {0, 70, 1000}, {70, 80, 1070}, true, 1},
        {"d64, 4 heads / 2 K/V, 48 q, 49 earlier keys + diagonal, full", 64, 4, 97, {49, 48, 1049}, {0, 49, 1000}, {49, 48, 1049}, false, 2},
        {"plain d32, 4 heads / 1 K/V, 13 q, 20 earlier keys + diagonal, causal", 32, 4, 33, {20, 13, 1020}, {0, 20, 1000}, {20, 13, 1020}, true, 1},
    };
    bool all = true;
    for (const Case& c : cases) {
        if (c.d == 64 || c.d == 128) {
            all &= run_case(c, 64);
            all &= run_case(c, 128);
        } else {
            all &= run_case(c, 0);
        }
    }
    printf("attention kernels on the SIMT emulation: %s\n", all ? "PASS" : "FAIL");
    return all ? 0 : 1;
}
