// The kernels of kernels/*.cu, compiled for the CPU with the SIMT stand-in (tests/simt/cuda_bf16.h),
// run as cuLaunchKernel asks, on the stream's own thread: the grid's blocks one after another, each
// block's threads as fibers (launch_fibers in cuda_bf16.h). The table of entry points is generated from the sources by scripts/sim-gpu.sh
// (kernel_table.inc: the names), and each entry's arguments are unpacked by the kernel's own
// signature, deduced by the compiler from the function itself.
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

// The system headers first, so that only the kernels' own definitions are hidden below.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>

#include <array>
#include <deque>
#include <map>

#include <barrier>
#include <functional>

#define RINGBENCH_SIMT
#pragma GCC visibility push(hidden)
#include "../simt/cuda_bf16.h"
#include "../../kernels/generate.cu"
#include "../../kernels/elementwise.cu"
#include "../../kernels/attention.cu"
#include "../../kernels/decode_attention.cu"
#include "../../kernels/flash_attention.cu"
#include "../../kernels/flash_wgmma.cu"
#include "../../kernels/backward.cu"
#include "../../kernels/attention_backward.cu"
#include "../../kernels/flash_backward.cu"
#pragma GCC visibility pop

#include "sim.h"


namespace sim {

struct Kernel {
    const char* name;
    std::vector<size_t> sizes;   // each argument's size, in signature order
    std::vector<bool> pointers;  // whether it is a pointer (then it must be device memory)
    void* fn;
    void (*trampoline)(void* fn, void** args);
};

template <typename... A, size_t... I> static void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename... A> static void trampoline(void* fn, void** args) {
    call(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}

template <typename... A> static Kernel entry(const char* name, void (*f)(A...)) {
    return Kernel{name, {sizeof(A)...}, {std::is_pointer_v<A>...}, reinterpret_cast<void*>(f), &trampoline<A...>};
}

static const std::vector<Kernel>& table() {
    static const std::vector<Kernel> t = {
#define SIM_KERNEL(name) entry(#name, &name),
#include "kernel_table.inc"
#undef SIM_KERNEL
    };
    return t;
}

const Kernel* find_kernel(const char* name) {
    for (const Kernel& k : table())
        if (strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

int encode_tensor_map(void* map, int dtype, unsigned rank, const void* address, const unsigned long long* dims,
                      const unsigned long long* strides, const unsigned* box, const unsigned* elem_strides, int interleave, int swizzle,
                      int oob_fill, char* why, size_t why_len) {
    return simt_tensor_map_encode(static_cast<TensorMap*>(map), dtype, rank, address, dims, strides, box, elem_strides, interleave, swizzle,
                                  oob_fill, why, why_len);
}

bool launch_kernel(const Kernel* k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes,
                   Stream* s, void** params) {
    const std::string what = std::string("cuLaunchKernel(") + k->name + ")";
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) {
        report("%s: a zero grid or block dimension (%u x %u x %u blocks of %u x %u x %u)", what.c_str(), gx, gy, gz, bx, by, bz);
        return false;
    }
    if (by != 1 || bz != 1) {
        report("%s: block %u x %u x %u: the SIMT stand-in runs 1-D blocks", what.c_str(), bx, by, bz);
        return false;
    }
    if (bx > 1024 || bx % 32 != 0) {
        report("%s: %u threads per block: the kernels' warp collectives need whole warps, at most 1024 threads", what.c_str(), bx);
        return false;
    }
    if (gy > 65535 || gz > 65535) {
        report("%s: grid y %u or z %u beyond the device's 65535", what.c_str(), gy, gz);
        return false;
    }
    if (!params && !k->sizes.empty()) {
        report("%s: no argument array for a kernel of %zu arguments", what.c_str(), k->sizes.size());
        return false;
    }
    // cuLaunchKernel copies the argument values at the call: the caller may reuse its storage.
    std::vector<std::vector<unsigned char>> args;
    for (size_t i = 0; i < k->sizes.size(); i++) {
        const auto* p = static_cast<const unsigned char*>(params[i]);
        args.emplace_back(p, p + k->sizes[i]);
        if (k->pointers[i]) {
            uint64_t ptr;
            memcpy(&ptr, p, sizeof ptr);
            const std::string arg = "argument " + std::to_string(i);
            if (!device_range(ptr, 1, what.c_str(), arg.c_str())) return false;
        }
    }
    enqueue(s, what, [k, gx, gy, gz, bx, shared_bytes, what, args = std::move(args)]() mutable {
        static std::mutex one_at_a_time; // kernels of different streams share the stand-in's globals
        std::lock_guard<std::mutex> g(one_at_a_time);
        std::vector<void*> ptrs;
        for (auto& a : args) ptrs.push_back(a.data());
        const std::function<void()> body = [&] { k->trampoline(k->fn, ptrs.data()); };
        launch_fibers(gx, gy, bx, shared_bytes, what.c_str(), body, gz);
    });
    return true;
}

} // namespace sim
