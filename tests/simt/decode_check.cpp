// The decode kernels' own sources (kernels/decode_attention.cu), and the LSE merge of partial
// results (kernels/elementwise.cu's lse_merge_f32), run on the CPU through the SIMT stand-in,
// launched as the CUDA backend launches them (src/backend/cuda/decode.rs). Each case's output is
// held to FP64 attention here, and dumped (SIMT_DUMP) for tests/simt.rs to hold to the kernel's
// CPU twin (src/backend/decode_twin.rs). Cases at awkward cache lengths (1, 127, 4097 keys),
// grouped K/V 8:1 and multi-head 1:1, several sequences of one call, accumulators that already
// hold a partial result (the merge), rows outside the call untouched.
#include "cuda_bf16.h"
#include "../../kernels/decode_attention.cu"
#include "../../kernels/elementwise.cu"

#include <stdio.h>
#include <string>

static int failures = 0;

static void report(const char* name, bool ok, double err) {
    printf("%-64s max abs %.3e: %s\n", name, err, ok ? "PASS" : "FAIL");
    failures += !ok;
}

static std::vector<__nv_bfloat16> values(size_t n, float scale, uint64_t seed) {
    std::vector<__nv_bfloat16> v(n);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = __float2bfloat16_rn(scale * (float((seed >> 40) & 0xffffff) / float(1 << 24) * 2.0f - 1.0f));
    }
    return v;
}

static float f(__nv_bfloat16 v) { return __bfloat162float(v); }

// As src/backend/mod.rs's decode_splits: blocks to fill, at most 64 splits, each a tile at least.
static int splits_for(int count, int kv_heads, int len) {
    int want = (264 + count * kv_heads - 1) / (count * kv_heads);
    want = want < 1 ? 1 : (want > 64 ? 64 : want);
    const int tiles = (len + DEC_TILE - 1) / DEC_TILE;
    return want < tiles ? want : (tiles < 1 ? 1 : tiles);
}

struct Case {
    const char* name;
    int heads, kv_heads, head_dim, count, seq0, len, q_row0;
    bool prior; // the accumulators already hold a partial result
};

static void check(const Case& c, int index) {
    const int hd = c.head_dim, width = c.heads * hd, kv_width = c.kv_heads * hd, group = c.heads / c.kv_heads;
    const int stride = c.len + 5; // rows reserved per sequence beyond those in use
    const int q_rows = c.q_row0 + c.count + 2, kv_rows = (c.seq0 + c.count + 1) * stride;
    // Sharp scores: queries and keys up to +-2, so the softmax is far from uniform.
    auto q = values(size_t(q_rows) * width, 2.0f, 11 + index), kv = values(size_t(kv_rows) * 2 * kv_width, 2.0f, 23 + index);
    std::vector<float> o(size_t(q_rows) * width, 7.25f), lse(size_t(q_rows) * c.heads, 7.25f);
    for (int i = 0; i < c.count; i++) {
        for (int h = 0; h < c.heads; h++) {
            const int r = c.q_row0 + i;
            lse[r * c.heads + h] = c.prior ? 0.5f + 0.25f * h : NEG_INF;
            for (int d = 0; d < hd; d++) o[r * width + h * hd + d] = c.prior ? 0.125f * ((d % 7) - 3) : 0.0f;
        }
    }
    const std::vector<float> o0 = o, lse0 = lse;
    const int splits = splits_for(c.count, c.kv_heads, c.len);
    const int chunk = ((c.len + splits - 1) / splits + DEC_TILE - 1) / DEC_TILE * DEC_TILE;
    std::vector<float> part(size_t(c.count) * c.heads * splits * (hd + 1), NAN);
    const float scale = float(1.0 / sqrt(double(hd)));
    launch3(splits, c.kv_heads, c.count, DEC_THREADS, [&] {
        decode_split_bf16(q.data(), kv.data(), part.data(), c.heads, c.kv_heads, hd, c.q_row0, c.seq0, stride, c.len, splits, chunk, scale);
    });
    launch(c.count * c.heads, 1, DEC_THREADS, [&] { decode_combine_f32(part.data(), o.data(), lse.data(), c.heads, hd, c.q_row0, c.count, splits); });

    // FP64: each row's softmax over its sequence's keys, merged with what the accumulators held.
    double worst = 0.0, largest = 0.0;
    bool ok = true;
    for (int r = 0; r < q_rows; r++) {
        for (int h = 0; h < c.heads; h++) {
            const bool inside = r >= c.q_row0 && r < c.q_row0 + c.count;
            if (!inside) {
                ok &= lse[r * c.heads + h] == 7.25f;
                for (int d = 0; d < hd; d++) ok &= o[r * width + h * hd + d] == 7.25f;
                continue;
            }
            const int i = r - c.q_row0, g = h / group;
            const long long base = (long long)(c.seq0 + i) * stride;
            std::vector<double> s(c.len);
            double mx = -INFINITY;
            for (int k = 0; k < c.len; k++) {
                double dot = 0.0;
                for (int d = 0; d < hd; d++) dot += double(f(q[r * width + h * hd + d])) * f(kv[(base + k) * 2 * kv_width + g * hd + d]);
                s[k] = dot / sqrt(double(hd));
                mx = fmax(mx, s[k]);
            }
            double z = 0.0;
            for (int k = 0; k < c.len; k++) z += exp(s[k] - mx);
            const double block = mx + log(z), old = lse0[r * c.heads + h];
            const double merged = old == -INFINITY ? block : fmax(old, block) + log(exp(old - fmax(old, block)) + exp(block - fmax(old, block)));
            ok &= fabs(lse[r * c.heads + h] - merged) <= 1e-5 * (1.0 + fabs(merged));
            for (int d = 0; d < hd; d++) {
                double v = 0.0;
                for (int k = 0; k < c.len; k++) v += exp(s[k] - mx) / z * f(kv[(base + k) * 2 * kv_width + kv_width + g * hd + d]);
                const double want = (old == -INFINITY ? 0.0 : o0[r * width + h * hd + d] * exp(old - merged)) + v * exp(block - merged);
                const double err = fabs(o[r * width + h * hd + d] - want);
                worst = fmax(worst, err);
                largest = fmax(largest, fabs(want));
            }
        }
    }
    // FP32 sums of up to 4097 terms of magnitude <= 2: well inside 2^-14 of the largest output.
    ok &= worst <= ldexp(1.0, -14) * fmax(largest, 1.0);
    char name[160];
    snprintf(name, sizeof name, "%s (%d x %d keys, %d:%d heads, hd %d, %d splits)", c.name, c.count, c.len, c.heads, c.kv_heads, hd, splits);
    report(name, ok, worst);
    if (const char* dump = getenv("SIMT_DUMP")) {
        const std::string path = std::string(dump) + "-" + std::to_string(index) + ".bin";
        FILE* fp = fopen(path.c_str(), "wb");
        const int header[12] = {c.heads, c.kv_heads, hd, c.q_row0, c.count, c.seq0, stride, c.len, q_rows, kv_rows, splits, 0};
        fwrite(header, 4, 12, fp);
        fwrite(q.data(), 2, q.size(), fp);
        fwrite(kv.data(), 2, kv.size(), fp);
        fwrite(o0.data(), 4, o0.size(), fp);
        fwrite(lse0.data(), 4, lse0.size(), fp);
        fwrite(o.data(), 4, o.size(), fp);
        fwrite(lse.data(), 4, lse.size(), fp);
        fclose(fp);
    }
}

// lse_merge_f32: rows 2.. of a partial (o, lse) into 3 rows that hold one, an empty side on each
// side of the merge, against lse_merge's formula in FP64.
static void check_lse_merge() {
    const int rows = 3, heads = 2, hd = 5, in_row0 = 2;
    std::vector<float> o(rows * heads * hd), lse(rows * heads), o_in((rows + in_row0) * heads * hd), lse_in((rows + in_row0) * heads);
    for (size_t i = 0; i < o.size(); i++) o[i] = 0.1f * float(i % 9) - 0.4f;
    for (size_t i = 0; i < o_in.size(); i++) o_in[i] = 0.07f * float(i % 11) - 0.3f;
    for (int i = 0; i < rows * heads; i++) lse[i] = 1.0f + 0.5f * i;
    for (int i = 0; i < (rows + in_row0) * heads; i++) lse_in[i] = 2.0f - 0.75f * i;
    lse[1] = NEG_INF;                  // row 0 head 1: the accumulator is empty
    lse_in[(in_row0 + 2) * heads] = NEG_INF; // row 2 head 0: the partial is empty
    const std::vector<float> o0 = o, l0 = lse;
    launch(1, 1, BLOCK, [&] { lse_merge_f32(o.data(), lse.data(), o_in.data(), lse_in.data(), rows, heads, hd, in_row0); });
    double worst = 0.0;
    bool ok = true;
    for (int r = 0; r < rows; r++) {
        for (int h = 0; h < heads; h++) {
            const double a = l0[r * heads + h], b = lse_in[(in_row0 + r) * heads + h];
            double merged, wa, wb;
            if (b == -INFINITY) {
                merged = a, wa = 1.0, wb = 0.0;
            } else if (a == -INFINITY) {
                merged = b, wa = 0.0, wb = 1.0;
            } else {
                const double m = fmax(a, b);
                merged = m + log(exp(a - m) + exp(b - m)), wa = exp(a - merged), wb = exp(b - merged);
            }
            ok &= fabs(lse[r * heads + h] - merged) <= 1e-6;
            for (int d = 0; d < hd; d++) {
                const double want = (wa == 0.0 ? 0.0 : o0[(r * heads + h) * hd + d] * wa) + o_in[((in_row0 + r) * heads + h) * hd + d] * wb;
                worst = fmax(worst, fabs(o[(r * heads + h) * hd + d] - want));
            }
        }
    }
    report("lse_merge_f32: 3 rows x 2 heads from row 2, empty sides", ok && worst <= 1e-6, worst);
}

int main() {
    const Case cases[] = {
        {"one cached key, GQA 8:1", 16, 2, 128, 1, 0, 1, 0, false},
        {"127 keys, multi-head, three sequences", 4, 4, 64, 3, 2, 127, 1, false},
        {"4097 keys, GQA 8:1, two sequences", 16, 2, 128, 2, 0, 4097, 0, false},
        {"200 keys merged into a partial result", 4, 4, 32, 2, 1, 200, 3, true},
    };
    int index = 0;
    for (const Case& c : cases) check(c, index++);
    check_lse_merge();
    printf("decode kernels on the SIMT emulation: %s\n", failures == 0 ? "PASS" : "FAIL");
    return failures == 0 ? 0 : 1;
}
