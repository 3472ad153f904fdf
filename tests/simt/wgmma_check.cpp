// The wgmma + TMA flash kernel's own source (kernels/flash_wgmma.cu), run on the CPU through the
// SIMT stand-in (cuda_bf16.h here: wgmma with its descriptors and swizzles, mbarriers, the bulk
// tensor copy from a tensor map, each block's 384 threads as fibers), against FP64 softmax
// attention, case by case as attention_cases.h runs them, and dumped for tests/simt.rs to hold
// against the kernel's CPU twin (128-key tiles). The cases are the flash kernel's: two calls
// merged, tiles ending mid-way, the diagonal off the tile grid, keys all after the queries, a
// single token, grouped K/V heads, and spans of three key tiles, so a stage is refilled while the
// other is in use. Prints one line per case; exit status 1 on any failure. Built and run by
// tests/simt.rs, with copies (and wgmma results) landing late, then early (SIMT_COPY=eager).
#define RINGBENCH_SIMT
#include "cuda_bf16.h"
#include "../../kernels/flash_wgmma.cu"

#include "attention_cases.h"

// A tensor map over rows [row0, row0 + len) of a row-major BF16 buffer `width` elements wide, in
// boxes of 64 columns x 128 rows with the 128-byte swizzle: what the CUDA backend encodes.
static TensorMap tensor_map(const Bf16s& buf, int width, int row0, int len) {
    TensorMap m;
    const unsigned long long dims[2] = {(unsigned long long)width, (unsigned long long)len};
    const unsigned long long strides[1] = {(unsigned long long)width * 2};
    const unsigned box[2] = {FW_SLAB, FW_BN}, elem[2] = {1, 1};
    char why[256];
    if (simt_tensor_map_encode(&m, 9, 2, buf.data() + size_t(row0) * width, dims, strides, box, elem, 0, 3, 0, why, sizeof why) != 0) {
        fprintf(stderr, "cuTensorMapEncodeTiled: %s\n", why);
        exit(1);
    }
    return m;
}

static const KernelUnderTest wgmma{"wgmma ", true, FW_BM, FW_BN,
                                   [](const Case& c, const Span& ks, const Bf16s& q, const Bf16s& kv, Floats& o, Floats& lse) {
                                       if (c.q.len == 0 || ks.len == 0) return; // the backend launches nothing
                                       const TensorMap qm = tensor_map(q, c.heads * c.d, c.q.row0, c.q.len);
                                       const TensorMap kvm = tensor_map(kv, 2 * c.kvh() * c.d, ks.row0, ks.len);
                                       const unsigned blocks = (c.q.len + FW_BM - 1) / FW_BM;
                                       const size_t smem = c.d == 64 ? FwSmem<64>::LAUNCH_BYTES : FwSmem<128>::LAUNCH_BYTES;
                                       const float scale = 1.0f / sqrtf(float(c.d));
                                       launch_fibers(blocks, c.heads, FW_THREADS, smem, "flash_wgmma", [&] {
                                           (c.d == 64 ? flash_wgmma_d64_bf16 : flash_wgmma_d128_bf16)(
                                               qm, kvm, o.data(), lse.data(), c.heads, c.kvh(), c.q.row0, c.q.len, c.q.pos0, ks.len,
                                               ks.pos0, c.causal, scale);
                                       });
                                   }};

int main() {
    const Case cases[] = {
        // 150 queries (two CTAs, the second of 22 rows) after 270 earlier keys (three tiles, the
        // last of 14 keys: stage 0 refilled), then the diagonal, which crosses both CTAs' tiles.
        {"d128, 1 head, 150 q, 270 earlier keys + diagonal, causal", 128, 1, 420, {270, 150, 1270}, {0, 270, 1000}, {270, 150, 1270}, true},
        {"d64, 2 heads, 48 q, 49 earlier keys + diagonal, full", 64, 2, 97, {49, 48, 1049}, {0, 49, 1000}, {49, 48, 1049}, false},
        // The second block of keys comes after every query: nothing may merge.
        {"d128, 1 head, 65 q, diagonal + keys after them, causal", 128, 1, 130, {0, 65, 0}, {0, 65, 0}, {65, 65, 5000}, true},
        {"d64, 1 head, 1 query, its own key, causal", 64, 1, 1, {0, 1, 7}, {0, 1, 7}, {0, 1, 7}, true},
        // Queries 5 positions behind their keys' start: the diagonal off the tile grid, and a
        // second CTA whose last tile holds 77 keys.
        {"d128, 2 heads, 200 q at 5.., 205 keys at 0.., causal", 128, 2, 205, {0, 200, 5}, {0, 0, 0}, {0, 205, 0}, true},
        // Three tiles of keys (stage reuse) at head dim 64, all visible.
        {"d64, 1 head, 64 q, 300 earlier keys + diagonal, full", 64, 1, 364, {300, 64, 1300}, {0, 300, 1000}, {300, 64, 1300}, false},
        // Grouped K/V heads: one K/V head shared by every query head (MQA), and two for four.
        {"d128, 4 heads / 1 K/V, 80 q, 70 earlier keys + diagonal, causal", 128, 4, 150, {70, 80, 1070}, {0, 70, 1000}, {70, 80, 1070}, true, 1},
        {"d64, 4 heads / 2 K/V, 48 q, 49 earlier keys + diagonal, full", 64, 4, 97, {49, 48, 1049}, {0, 49, 1000}, {49, 48, 1049}, false, 2},
    };
    bool all = true;
    for (const Case& c : cases) all &= run_case(c, wgmma);
    printf("wgmma flash kernel on the SIMT emulation: %s\n", all ? "PASS" : "FAIL");
    return all ? 0 : 1;
}
