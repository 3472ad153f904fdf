// An attention case of the SIMT checks (attention_cases.h for the forward kernels,
// backward_check.cpp for the backward ones): its head shape, rows, the query span and the two key
// spans of the two calls a ring step makes into the same accumulators, the mask and the K/V heads.
#pragma once
#include <vector>

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

using Bf16s = std::vector<__nv_bfloat16>;
using Floats = std::vector<float>;
