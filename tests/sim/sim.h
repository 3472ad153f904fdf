// The simulated GPU's core, shared by its three stand-in libraries (libcuda.so.1 holds it and
// exports it; libcublas.so.12 and libnccl.so.2 link against it): device memory in a region of its
// own, streams as in-order queues run by threads of their own, events, and the messages that name
// the call at fault. Test-only: found only through the library path the tests set
// (scripts/sim-gpu.sh). docs/testing.md, "The simulated GPU".
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <string>

namespace sim {

// One line on stderr, "ringbench-sim[pid]: ...". Every refusal of a call prints one, naming the
// call, before the call returns its error code.
void report(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// The environment's settings, read once.
struct Settings {
    uint64_t memory_bytes; // RINGBENCH_SIM_MEMORY: what cuMemGetInfo reports as total (default 16 GiB)
    bool delay;            // RINGBENCH_SIM_DELAY=1: every queued operation starts after a random delay
    double nccl_timeout_s; // RINGBENCH_SIM_NCCL_TIMEOUT_S: a send or receive waiting this long is reported
    long fail_group_end;   // RINGBENCH_SIM_NCCL_FAIL_GROUP_END=N: the process's N-th outermost ncclGroupEnd fails (0: none)
};
const Settings& settings();

// BF16 bits to FP32 and back (round to nearest even, NaN kept), for cuBLAS's and NCCL's arithmetic.
inline float bf16_bits_to_float(uint16_t b) {
    const uint32_t u = uint32_t(b) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline uint16_t float_to_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

// ---- device memory -------------------------------------------------------------------------
// Allocations come from one reserved region, each with inaccessible pages around it and its end
// against the next one, and their address space is never reused: a kernel that reads past an
// allocation or after its free faults, and the fault handler names the operation that ran.
// Returns 0 (and reports) when the simulated device's memory is exhausted.
uint64_t device_alloc(size_t bytes, const char* call);
// False (and reported) for a pointer that is not a live allocation's start: a double free, or a
// host pointer.
bool device_free(uint64_t ptr, const char* call);
// Whether [ptr, ptr + bytes) lies inside one live allocation; otherwise reports why, naming the
// call and the operand (`what`).
bool device_range(uint64_t ptr, size_t bytes, const char* call, const char* what);
bool is_device_address(uint64_t ptr);
uint64_t device_used();
// Page-locked host memory (cuMemHostAlloc): copies to and from it are truly asynchronous.
void* host_alloc(size_t bytes);
bool host_free(void* p);
bool is_pinned(const void* p, size_t bytes);

// The operation running now on this thread (a stream's worker or a kernel's block thread), for
// the fault handler's message.
void set_current_op(const char* what);

// ---- streams and events --------------------------------------------------------------------
struct Stream;
Stream* new_stream();
// The stream of a CUstream handle (0 and the legacy / per-thread handles name the null stream).
Stream* stream_of(void* handle);
// Queue `op` on `s`; it runs after everything queued on `s` before it. `name` names it in reports.
void enqueue(Stream* s, std::string name, std::function<void()> op);
// Block the host until everything queued on `s` so far has run.
void synchronize(Stream* s);
// Whether everything queued on `s` has run.
bool idle(Stream* s);
// Every stream of the process.
void synchronize_all();

// ---- kernels (kernels.cpp) -----------------------------------------------------------------
struct Kernel;
// The kernel of that name compiled from kernels/*.cu with the SIMT stand-in, or null.
const Kernel* find_kernel(const char* name);
// Check the launch and queue it: the arguments are copied now, as cuLaunchKernel copies them;
// pointer arguments must point into live device allocations. Returns false (reported) if refused.
bool launch_kernel(const Kernel* k, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x, unsigned block_y,
                   unsigned block_z, unsigned shared_bytes, Stream* s, void** params);

// cuTensorMapEncodeTiled's encoding, by the SIMT stand-in (simt_tensor_map_encode in
// tests/simt/cuda_bf16.h): 0, or nonzero with the reason in `why`. `map` is 128 bytes.
int encode_tensor_map(void* map, int dtype, unsigned rank, const void* address, const unsigned long long* dims,
                      const unsigned long long* strides, const unsigned* box, const unsigned* elem_strides, int interleave, int swizzle,
                      int oob_fill, char* why, size_t why_len);

// Whether the calling thread has a current context (the driver refuses most calls otherwise),
// and that context's device.
bool context_current(const char* call);
int current_device();

} // namespace sim
