// The attention kernels' own sources (the mma.sync flash kernel, and the plain one that serves
// other head dims), run on the CPU through the SIMT stand-in (cuda_bf16.h here), against FP64
// softmax attention, case by case as attention_cases.h runs them. Prints one line per case; exit
// status 1 on any failure. Built and run by tests/simt.rs.
#define RINGBENCH_SIMT
#include "cuda_bf16.h"
#include "../../kernels/flash_attention.cu"
#include "../../kernels/attention.cu"

#include "attention_cases.h"

// The flash kernel at a block shape (64 or 128 query rows), as the backend launches it.
static KernelUnderTest flash(int bm) {
    return {bm == 64 ? "m64 " : "m128 ", true, bm, 64, [bm](const Case& c, const Span& ks, const Bf16s& q, const Bf16s& kv, Floats& o, Floats& lse) {
                const float scale = 1.0f / sqrtf(float(c.d));
                const unsigned blocks = (c.q.len + bm - 1) / bm;
                launch(blocks, c.heads, 2 * bm, [&] {
                    auto kernel = c.d == 64 ? (bm == 64 ? flash_attention_d64_m64_bf16 : flash_attention_d64_m128_bf16)
                                            : (bm == 64 ? flash_attention_d128_m64_bf16 : flash_attention_d128_m128_bf16);
                    kernel(q.data(), kv.data(), o.data(), lse.data(), c.heads, c.kvh(), c.q.row0, c.q.len, c.q.pos0, ks.row0, ks.len,
                           ks.pos0, c.causal, scale);
                });
            }};
}

// The plain kernel: one warp per query row, as the backend launches it.
static const KernelUnderTest plain{"", false, 0, 0, [](const Case& c, const Span& ks, const Bf16s& q, const Bf16s& kv, Floats& o, Floats& lse) {
                                       const unsigned blocks = (c.q.len + WARPS - 1) / WARPS;
                                       launch(blocks, c.heads, 32 * WARPS, [&] {
                                           attention_bf16(q.data(), kv.data(), o.data(), lse.data(), c.heads, c.kvh(), c.d, c.q.row0,
                                                          c.q.len, c.q.pos0, ks.row0, ks.len, ks.pos0, c.causal, 1.0f / sqrtf(float(c.d)));
                                       });
                                   }};

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
            all &= run_case(c, flash(64));
            all &= run_case(c, flash(128));
        } else {
            all &= run_case(c, plain);
        }
    }
    printf("attention kernels on the SIMT emulation: %s\n", all ? "PASS" : "FAIL");
    return all ? 0 : 1;
}
