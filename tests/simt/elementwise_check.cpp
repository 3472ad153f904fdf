// The generator and element-wise kernels' own sources (kernels/generate.cu, elementwise.cu), run on
// the CPU through the SIMT stand-in, launched as the CUDA backend launches them (BLOCK threads,
// one per element, or one block per row for RMSNorm). The generator must reproduce docs/design.md's
// test vectors bit for bit and give a TP shard exactly the slice of the whole tensor; the other
// kernels must agree with the formulas of docs/design.md, computed here in FP64, to one BF16 rounding
// (or exactly, where nothing is rounded). Built and run by tests/simt.rs.
#include "cuda_bf16.h"
#include "../../kernels/generate.cu"
#include "../../kernels/elementwise.cu"

#include <stdio.h>

static int failures = 0;

static void report(const char* name, bool ok, double err) {
    printf("%-58s max abs %.3e: %s\n", name, err, ok ? "PASS" : "FAIL");
    failures += !ok;
}

static float f(__nv_bfloat16 v) { return __bfloat162float(v); }

// One BF16 ulp at the larger magnitude of a and b (8 significant bits).
static double ulp(double a, double b) {
    const double x = fmax(fabs(a), fabs(b));
    return x == 0.0 ? 0.0 : ldexp(1.0, ilogb(x) - 7);
}

static unsigned blocks_for(long long n) { return unsigned((n + BLOCK - 1) / BLOCK); }

static std::vector<__nv_bfloat16> generate(int rows, int width, u64 seed, u64 tensor, u64 global_cols, u64 row0, std::vector<int> blocks,
                                           int kind, float scale) {
    std::vector<__nv_bfloat16> out(size_t(rows) * width, __nv_bfloat16{0x7fc0}); // NaN poison
    blocks.resize(5, 0);
    launch(blocks_for((long long)rows * width), 1, BLOCK, [&] {
        generate_bf16(out.data(), 0, rows, width, seed, tensor, global_cols, row0, 1, blocks[0], blocks[1], blocks[2], blocks[3], blocks[4],
                      kind, scale);
    });
    return out;
}

static void check_generator() {
    // docs/design.md's test vectors, seed 0: the input (tensor 1), layer 0's W_qkv with d = 64 (tensor
    // 17, scale 1/8) and its first RMSNorm gain (tensor 16).
    const double input[] = {0.5, -0.86328125, 0.00127410888671875, 0.126953125};
    const double qkv[] = {-0.1162109375, 0.11279296875, -0.08740234375};
    const double gain[] = {0.96484375, 1.0234375, 1.015625};
    bool ok = true;
    auto in = generate(1, 4, 0, 1, 4, 0, {0, 4}, 0, 1.0f);
    for (int i = 0; i < 4; i++) ok &= f(in[i]) == input[i];
    auto w = generate(1, 3, 0, 17, 3, 0, {0, 3}, 1, 0.125f);
    for (int i = 0; i < 3; i++) ok &= f(w[i]) == qkv[i];
    auto g = generate(1, 3, 0, 16, 3, 0, {0, 3}, 2, 1.0f);
    for (int i = 0; i < 3; i++) ok &= f(g[i]) == gain[i];
    report("generate: docs/design.md test vectors", ok, 0.0);

    // A TP shard of W_qkv (d = 8, head 1 of 2): columns 4..8 of Q, K and V, rows 2..7.
    const int d = 8;
    auto whole = generate(d, 3 * d, 5, 18, 3 * d, 0, {0, 3 * d}, 1, 0.35355339f);
    auto shard = generate(5, 12, 5, 18, 3 * d, 2, {4, 4, 12, 4, 20}, 1, 0.35355339f);
    ok = true;
    for (int r = 0; r < 5; r++)
        for (int b = 0; b < 3; b++)
            for (int j = 0; j < 4; j++) ok &= shard[r * 12 + b * 4 + j].x == whole[(r + 2) * 3 * d + (4 + 8 * b) + j].x;
    report("generate: a TP shard is the slice of the whole tensor", ok, 0.0);
}

static std::vector<__nv_bfloat16> values(int n, float scale, uint64_t seed) {
    std::vector<__nv_bfloat16> v(n);
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = __float2bfloat16_rn(scale * (float((seed >> 40) & 0xffffff) / float(1 << 24) * 2.0f - 1.0f));
    }
    return v;
}

static void check_rms_norm() {
    const int rows = 3, cols = 300; // more columns than threads: each thread takes several
    auto x = values(rows * cols, 2.0f, 1), gain = values(cols, 1.0f, 2);
    std::vector<__nv_bfloat16> out(rows * cols, __nv_bfloat16{0x7fc0});
    launch(rows, 1, BLOCK, [&] { rms_norm_bf16(x.data(), gain.data(), out.data(), cols); });
    bool ok = true;
    double err = 0.0;
    for (int r = 0; r < rows; r++) {
        double ss = 0.0;
        for (int c = 0; c < cols; c++) ss += double(f(x[r * cols + c])) * f(x[r * cols + c]);
        const double inv = 1.0 / sqrt(ss / cols + 1e-5);
        for (int c = 0; c < cols; c++) {
            const double want = f(x[r * cols + c]) * inv * f(gain[c]), got = f(out[r * cols + c]);
            err = fmax(err, fabs(got - want));
            ok &= fabs(got - want) <= ulp(got, want); // NaN fails
        }
    }
    report("rms_norm 3 x 300", ok, err);
}

static void check_rope() {
    // 2 heads of dim 16 in rows 40 wide (Q of a wider K|V buffer); rows 2..6 at positions 99990,
    // 100006, ... (a striped layout's tokens, 16 apart)
    const int rows = 7, cols = 40, heads = 2, hd = 16, row0 = 2, len = 5, pos0 = 99990, stride = 16;
    auto x = values(rows * cols, 1.0f, 3);
    auto before = x;
    launch(blocks_for((long long)len * heads * hd / 2), 1, BLOCK, [&] { rope_bf16(x.data(), cols, heads, hd, row0, len, pos0, stride); });
    bool ok = true;
    double err = 0.0;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            double want = f(before[r * cols + c]);
            const int h = c / hd, i = c % hd;
            if (r >= row0 && r < row0 + len && h < heads) {
                const int k = i % (hd / 2);
                const double angle = double(pos0 + (r - row0) * stride) * pow(10000.0, -2.0 * k / hd);
                const double a = f(before[r * cols + h * hd + k]), b = f(before[r * cols + h * hd + k + hd / 2]);
                want = i < hd / 2 ? a * cos(angle) - b * sin(angle) : a * sin(angle) + b * cos(angle);
            }
            const double got = f(x[r * cols + c]);
            err = fmax(err, fabs(got - want));
            ok &= fabs(got - want) <= ulp(got, want);
        }
    }
    report("rope 5 of 7 rows, 2 x 16 in 40 columns, at 99990, 100006, ..", ok, err);
}

static void check_pointwise() {
    const int n = 1023;
    auto x = values(n, 4.0f, 4), y = values(n, 4.0f, 5);
    auto g = x;
    launch(blocks_for(n), 1, BLOCK, [&] { gelu_bf16(g.data(), n); });
    bool ok = true;
    double err = 0.0;
    for (int i = 0; i < n; i++) {
        const double z = f(x[i]), want = 0.5 * z * (1.0 + tanh(sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z))), got = f(g[i]);
        err = fmax(err, fabs(got - want));
        ok &= fabs(got - want) <= ulp(got, want);
    }
    report("gelu 1023", ok, err);

    // SwiGLU: 5 rows of [gate | up], 201 wide each, against silu(g) u in FP64.
    const int rows = 5, fw = 201;
    auto gu = values(rows * 2 * fw, 6.0f, 6);
    std::vector<__nv_bfloat16> sw(rows * fw);
    launch(blocks_for(rows * fw), 1, BLOCK, [&] { swiglu_bf16(gu.data(), sw.data(), rows, fw); });
    ok = true;
    err = 0.0;
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < fw; j++) {
            const double g = f(gu[r * 2 * fw + j]), u = f(gu[r * 2 * fw + fw + j]);
            const double want = g / (1.0 + exp(-g)) * u, got = f(sw[r * fw + j]);
            err = fmax(err, fabs(got - want));
            ok &= fabs(got - want) <= ulp(got, want);
        }
    }
    report("swiglu 5 x 201", ok, err);

    auto s = x;
    launch(blocks_for(n), 1, BLOCK, [&] { add_bf16(s.data(), y.data(), n); });
    ok = true;
    err = 0.0;
    for (int i = 0; i < n; i++) {
        const double want = double(f(x[i])) + f(y[i]), got = f(s[i]);
        err = fmax(err, fabs(got - want));
        ok &= fabs(got - want) <= ulp(got, want) / 2; // one rounding of an exact sum: at most half an ulp
    }
    report("add 1023", ok, err);

    std::vector<float> acc(n, NAN);
    launch(blocks_for(n), 1, BLOCK, [&] { fill_f32(acc.data(), n, -INFINITY); });
    ok = true;
    for (float v : acc) ok &= v == -INFINITY;
    report("fill_f32 1023 with -inf", ok, 0.0);

    for (int i = 0; i < n; i++) acc[i] = 3.0f * (float(i) / n - 0.5f) + 1e-3f;
    std::vector<__nv_bfloat16> stored(n, __nv_bfloat16{0x7fc0});
    launch(blocks_for(n), 1, BLOCK, [&] { f32_to_bf16(acc.data(), stored.data(), n); });
    ok = true;
    for (int i = 0; i < n; i++) ok &= stored[i].x == __float2bfloat16_rn(acc[i]).x;
    report("f32_to_bf16 1023 (round to nearest even)", ok, 0.0);

    // copy_block: 41 x 24 from (50, 48) of a 97 x 77 buffer to (83, 13) of a 130 x 50 one; every
    // other value of the destination untouched.
    const int sr = 97, sc = 77, dr = 130, dc = 50, br = 41, bc = 24, s0 = 50, c0 = 48, d0 = 83, e0 = 13;
    auto src = values(sr * sc, 1.0f, 7), dst = values(dr * dc, 1.0f, 8), before = dst;
    const long long src_off = (long long)s0 * sc + c0, dst_off = (long long)d0 * dc + e0;
    launch(blocks_for(br * bc), 1, BLOCK, [&] { copy_block_bf16(src.data(), sc, src_off, dst.data(), dc, dst_off, br, bc); });
    ok = true;
    for (int r = 0; r < dr; r++) {
        for (int c = 0; c < dc; c++) {
            const bool inside = r >= d0 && r < d0 + br && c >= e0 && c < e0 + bc;
            const __nv_bfloat16 want = inside ? src[(r - d0 + s0) * sc + (c - e0 + c0)] : before[r * dc + c];
            ok &= dst[r * dc + c].x == want.x;
        }
    }
    report("copy_block 41 x 24 between widths 77 and 50", ok, 0.0);
}

int main() {
    check_generator();
    check_rms_norm();
    check_rope();
    check_pointwise();
    printf("element-wise kernels on the SIMT emulation: %s\n", failures == 0 ? "PASS" : "FAIL");
    return failures == 0 ? 0 : 1;
}
