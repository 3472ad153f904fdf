// libcuda.so.1 of the simulated GPU: the driver API entry points that cudarc calls for ringbench,
// with the signatures and codes of the real cuda.h (from the CUDA runtime wheel that CI already
// installs), so a mismatch is a compile error here. An entry point not defined here is missing
// from the library, and cudarc stops with "Missing symbol <name>" when it is first called.
#include <cuda.h>

#include <elf.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "sim.h"

#define SIM_API extern "C" __attribute__((visibility("default")))

namespace {

// The name every output carries (docs/design.md: a simulated device says so everywhere); ringbench
// recognizes it by its prefix, backend::SIMULATED_DEVICE.
const char kDeviceName[] = "ringbench simulated GPU (kernels on the CPU)";

bool g_initialized = false;

int device_count() {
    static const int n = [] {
        const char* v = getenv("RINGBENCH_SIM_DEVICES");
        const int n = v ? atoi(v) : 1;
        if (n < 1 || n > 64) sim::fatal("RINGBENCH_SIM_DEVICES=%s: expected 1 to 64 simulated devices", v);
        return n;
    }();
    return n;
}

struct Context {
    int device;
    int retains;
};
std::mutex g_ctx_mutex;
Context g_contexts[64];
thread_local Context* t_current = nullptr;

double now_ms() {
    static const auto t0 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

struct Event {
    unsigned flags;
    std::mutex m;
    std::condition_variable cv;
    uint64_t recorded = 0, completed = 0;
    double at_ms = 0;
};
std::mutex g_events_mutex;
std::set<Event*> g_events;

Event* event_of(CUevent e, const char* call) {
    std::lock_guard<std::mutex> g(g_events_mutex);
    auto* ev = reinterpret_cast<Event*>(e);
    if (!g_events.count(ev)) {
        sim::report("%s: %p is not a live event (destroyed, or never created)", call, (void*)e);
        return nullptr;
    }
    return ev;
}

struct Module {
    std::vector<unsigned char> image;
};
struct Function {
    const sim::Kernel* kernel;
    std::string name;
    int max_dynamic_shared = 48 << 10; // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (the default)
    int registers = -1;                // CU_FUNC_ATTRIBUTE_NUM_REGS, from the CUBIN (-1: not known)
    int local_bytes = -1;              // CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, from the CUBIN
};

// A kernel's registers and stack frame as the driver reads them from a CUBIN: the module-wide
// .nv.info section holds EIATTR_REGCOUNT (0x2f) and EIATTR_FRAME_SIZE (0x11) records, each a
// (symbol index, value) pair, the symbol being the kernel's in .symtab.
static void cubin_resources(const std::vector<unsigned char>& img, const std::string& name, Function* fn) {
    if (img.size() < sizeof(Elf64_Ehdr) || memcmp(img.data(), ELFMAG, SELFMAG) != 0) return;
    Elf64_Ehdr eh;
    memcpy(&eh, img.data(), sizeof eh);
    auto section = [&](unsigned i) {
        Elf64_Shdr sh{};
        if (eh.e_shoff + (i + 1) * sizeof(Elf64_Shdr) <= img.size()) memcpy(&sh, img.data() + eh.e_shoff + i * sizeof sh, sizeof sh);
        return sh;
    };
    auto text = [&](const Elf64_Shdr& tab, unsigned off) -> std::string {
        if (tab.sh_offset + off >= img.size()) return "";
        const char* p = reinterpret_cast<const char*>(img.data() + tab.sh_offset + off);
        return std::string(p, strnlen(p, img.size() - tab.sh_offset - off));
    };
    const Elf64_Shdr names = section(eh.e_shstrndx);
    long symbol = -1;
    for (unsigned i = 0; i < eh.e_shnum && symbol < 0; i++) {
        const Elf64_Shdr sh = section(i);
        if (sh.sh_type != SHT_SYMTAB || sh.sh_entsize != sizeof(Elf64_Sym)) continue;
        const Elf64_Shdr strings = section(sh.sh_link);
        for (uint64_t k = 0; k < sh.sh_size / sizeof(Elf64_Sym) && sh.sh_offset + (k + 1) * sizeof(Elf64_Sym) <= img.size(); k++) {
            Elf64_Sym sym;
            memcpy(&sym, img.data() + sh.sh_offset + k * sizeof sym, sizeof sym);
            if (text(strings, sym.st_name) == name) symbol = long(k);
        }
    }
    if (symbol < 0) return;
    for (unsigned i = 0; i < eh.e_shnum; i++) {
        const Elf64_Shdr sh = section(i);
        if (text(names, sh.sh_name) != ".nv.info" || sh.sh_offset + sh.sh_size > img.size()) continue;
        // Records: a format byte, an attribute byte, then for EIFMT_SVAL (4) a 16-bit size and
        // that many bytes; EIFMT_HVAL (3) and EIFMT_NVAL (1) carry 2 bytes or none in place.
        for (uint64_t p = sh.sh_offset; p + 4 <= sh.sh_offset + sh.sh_size;) {
            const unsigned char format = img[p], attr = img[p + 1];
            if (format != 4) {
                p += format == 1 ? 2 : 4;
                continue;
            }
            uint16_t size;
            memcpy(&size, &img[p + 2], 2);
            if (size == 8 && p + 12 <= img.size()) {
                uint32_t pair[2];
                memcpy(pair, &img[p + 4], 8);
                if (pair[0] == uint32_t(symbol) && attr == 0x2f) fn->registers = int(pair[1]);
                if (pair[0] == uint32_t(symbol) && attr == 0x11) fn->local_bytes = int(pair[1]);
            }
            p += 4 + size;
        }
    }
}

// RINGBENCH_SIM_REGISTERS=name=N[,name=N]: a kernel loaded with N registers whatever its CUBIN
// says, for the tests of what ringbench does with a kernel compiled short of its budget.
static void planted_registers(Function* fn) {
    const char* v = getenv("RINGBENCH_SIM_REGISTERS");
    if (!v) return;
    std::string all(v);
    for (size_t at = 0; at <= all.size();) {
        size_t end = all.find(',', at);
        if (end == std::string::npos) end = all.size();
        const std::string item = all.substr(at, end - at);
        const size_t eq = item.find('=');
        if (eq != std::string::npos && item.substr(0, eq) == fn->name) fn->registers = atoi(item.c_str() + eq + 1);
        at = end + 1;
    }
}

bool ready(const char* call) {
    if (!g_initialized) {
        sim::report("%s: cuInit has not been called", call);
        return false;
    }
    return true;
}

#define NEED_INIT(call)                                                                                                              \
    if (!ready(call)) return CUDA_ERROR_NOT_INITIALIZED
#define NEED_CONTEXT(call)                                                                                                           \
    NEED_INIT(call);                                                                                                                 \
    if (!sim::context_current(call)) return CUDA_ERROR_INVALID_CONTEXT

// The size of a module image: an ELF file's extent from its headers, or a PTX text's length.
size_t image_size(const void* image) {
    const auto* b = static_cast<const unsigned char*>(image);
    if (memcmp(b, ELFMAG, SELFMAG) == 0 && b[EI_CLASS] == ELFCLASS64) {
        Elf64_Ehdr h;
        memcpy(&h, b, sizeof h);
        size_t end = std::max<size_t>(h.e_shoff + size_t(h.e_shnum) * h.e_shentsize, h.e_phoff + size_t(h.e_phnum) * h.e_phentsize);
        for (int i = 0; i < h.e_shnum; i++) {
            Elf64_Shdr s;
            memcpy(&s, b + h.e_shoff + size_t(i) * h.e_shentsize, sizeof s);
            if (s.sh_type != SHT_NOBITS) end = std::max<size_t>(end, s.sh_offset + s.sh_size);
        }
        return end;
    }
    return strlen(static_cast<const char*>(image)) + 1;
}

} // namespace

bool sim::context_current(const char* call) {
    if (!t_current) {
        sim::report("%s: no current context on this thread (cuCtxSetCurrent / CudaContext::bind_to_thread was not called on it)", call);
        return false;
    }
    return true;
}

int sim::current_device() { return t_current ? t_current->device : -1; }

// ---- initialization, devices, contexts -------------------------------------------------------

SIM_API CUresult cuInit(unsigned int flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    g_initialized = true;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = CUDA_VERSION; // the API of the header it was built against
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGetCount(int* n) {
    NEED_INIT("cuDeviceGetCount");
    *n = device_count();
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    NEED_INIT("cuDeviceGet");
    if (ordinal < 0 || ordinal >= device_count()) {
        sim::report("cuDeviceGet: ordinal %d, but %d simulated device(s) (RINGBENCH_SIM_DEVICES)", ordinal, device_count());
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *d = ordinal;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    NEED_INIT("cuDeviceGetName");
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, size_t(len), "%s", kDeviceName);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    NEED_INIT("cuDeviceTotalMem_v2");
    *bytes = sim::settings().memory_bytes;
    return CUDA_SUCCESS;
}

static CUresult uuid(CUuuid* u, CUdevice d) {
    NEED_INIT("cuDeviceGetUuid");
    memset(u->bytes, 0, sizeof u->bytes);
    memcpy(u->bytes, "ringbench-sim", 13);
    u->bytes[15] = char(d);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuDeviceGetUuid(CUuuid* u, CUdevice d) { return uuid(u, d); }
SIM_API CUresult cuDeviceGetUuid_v2(CUuuid* u, CUdevice d) { return uuid(u, d); }

SIM_API CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d) {
    NEED_INIT("cuDeviceGetAttribute");
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break; // the kernels are built for sm_90a
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 0; break; // cudarc then allocates with cuMemAlloc
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *v = 0xe0 + d; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = 48 << 10; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 0x7fffffff; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = 65535; break;
    default:
        sim::report("cuDeviceGetAttribute: attribute %d is not simulated", int(a));
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice d) {
    NEED_INIT("cuDevicePrimaryCtxRetain");
    if (d < 0 || d >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> g(g_ctx_mutex);
    g_contexts[d].device = d;
    g_contexts[d].retains++;
    *ctx = reinterpret_cast<CUcontext>(&g_contexts[d]);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    NEED_INIT("cuDevicePrimaryCtxRelease_v2");
    if (d < 0 || d >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> g(g_ctx_mutex);
    if (g_contexts[d].retains == 0) {
        sim::report("cuDevicePrimaryCtxRelease_v2: device %d's primary context is not retained", d);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    g_contexts[d].retains--;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxSetCurrent(CUcontext ctx) {
    NEED_INIT("cuCtxSetCurrent");
    auto* c = reinterpret_cast<Context*>(ctx);
    if (c && (c < g_contexts || c >= g_contexts + 64)) {
        sim::report("cuCtxSetCurrent: %p is not a context", (void*)ctx);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    t_current = c;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetCurrent(CUcontext* ctx) {
    NEED_INIT("cuCtxGetCurrent");
    *ctx = reinterpret_cast<CUcontext>(t_current);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxGetDevice(CUdevice* d) {
    NEED_CONTEXT("cuCtxGetDevice");
    *d = t_current->device;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxSynchronize() {
    NEED_CONTEXT("cuCtxSynchronize");
    sim::synchronize_all();
    return CUDA_SUCCESS;
}

// ---- memory --------------------------------------------------------------------------------

SIM_API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    NEED_CONTEXT("cuMemGetInfo_v2");
    const uint64_t t = sim::settings().memory_bytes, used = sim::device_used();
    *total = t;
    *free_bytes = used < t ? t - used : 0;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    NEED_CONTEXT("cuMemAlloc_v2");
    if (!p || bytes == 0) {
        sim::report("cuMemAlloc_v2: %zu bytes (the driver refuses 0)", bytes);
        return CUDA_ERROR_INVALID_VALUE;
    }
    const uint64_t ptr = sim::device_alloc(bytes, "cuMemAlloc_v2");
    if (!ptr) return CUDA_ERROR_OUT_OF_MEMORY;
    *p = ptr;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuMemFree_v2(CUdeviceptr p) {
    NEED_CONTEXT("cuMemFree_v2");
    // The driver frees only once the device has finished with the memory; the simulation waits
    // for every stream, so a kernel still queued cannot touch freed pages.
    sim::synchronize_all();
    return sim::device_free(p, "cuMemFree_v2") ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SIM_API CUresult cuMemHostAlloc(void** pp, size_t bytes, unsigned int) {
    NEED_CONTEXT("cuMemHostAlloc");
    *pp = sim::host_alloc(bytes);
    return *pp ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

SIM_API CUresult cuMemAllocHost_v2(void** pp, size_t bytes) { return cuMemHostAlloc(pp, bytes, 0); }

SIM_API CUresult cuMemFreeHost(void* p) {
    NEED_CONTEXT("cuMemFreeHost");
    sim::synchronize_all();
    if (!sim::host_free(p)) {
        sim::report("cuMemFreeHost: %p was not allocated by cuMemHostAlloc (or was freed already)", p);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

static CUresult memset_on(sim::Stream* s, CUdeviceptr dst, unsigned char v, size_t n, const char* call, bool wait) {
    NEED_CONTEXT(call);
    if (n == 0) return CUDA_SUCCESS;
    if (!sim::device_range(dst, n, call, "destination")) return CUDA_ERROR_INVALID_VALUE;
    sim::enqueue(s, call, [=] { memset(reinterpret_cast<void*>(dst), v, n); });
    if (wait) sim::synchronize(s);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    return memset_on(sim::stream_of(nullptr), dst, v, n, "cuMemsetD8_v2", true);
}
SIM_API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
    return memset_on(sim::stream_of(s), dst, v, n, "cuMemsetD8Async", false);
}

// Host to device. From pageable memory the driver stages the source before returning, so the
// caller may reuse it at once; from page-locked memory the copy reads it when it runs.
static CUresult htod(CUdeviceptr dst, const void* src, size_t n, sim::Stream* s, const char* call, bool wait) {
    NEED_CONTEXT(call);
    if (n == 0) return CUDA_SUCCESS;
    if (!sim::device_range(dst, n, call, "destination")) return CUDA_ERROR_INVALID_VALUE;
    if (sim::is_device_address(uint64_t(uintptr_t(src)))) {
        sim::report("%s: the source %p is device memory, not host memory", call, src);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (sim::is_pinned(src, n)) {
        sim::enqueue(s, call, [=] { memcpy(reinterpret_cast<void*>(dst), src, n); });
    } else {
        const auto* b = static_cast<const unsigned char*>(src);
        sim::enqueue(s, call, [dst, staged = std::vector<unsigned char>(b, b + n)] {
            memcpy(reinterpret_cast<void*>(dst), staged.data(), staged.size());
        });
    }
    if (wait) sim::synchronize(s);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    return htod(dst, src, n, sim::stream_of(nullptr), "cuMemcpyHtoD_v2", true);
}
SIM_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    return htod(dst, src, n, sim::stream_of(s), "cuMemcpyHtoDAsync_v2", false);
}

// Device to host. Into pageable memory the call returns once the copy is done; into page-locked
// memory it is asynchronous.
static CUresult dtoh(void* dst, CUdeviceptr src, size_t n, sim::Stream* s, const char* call, bool wait) {
    NEED_CONTEXT(call);
    if (n == 0) return CUDA_SUCCESS;
    if (!sim::device_range(src, n, call, "source")) return CUDA_ERROR_INVALID_VALUE;
    if (sim::is_device_address(uint64_t(uintptr_t(dst)))) {
        sim::report("%s: the destination %p is device memory, not host memory", call, dst);
        return CUDA_ERROR_INVALID_VALUE;
    }
    sim::enqueue(s, call, [=] { memcpy(dst, reinterpret_cast<const void*>(src), n); });
    if (wait || !sim::is_pinned(dst, n)) sim::synchronize(s);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    return dtoh(dst, src, n, sim::stream_of(nullptr), "cuMemcpyDtoH_v2", true);
}
SIM_API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    return dtoh(dst, src, n, sim::stream_of(s), "cuMemcpyDtoHAsync_v2", false);
}

static CUresult dtod(CUdeviceptr dst, CUdeviceptr src, size_t n, sim::Stream* s, const char* call, bool wait) {
    NEED_CONTEXT(call);
    if (n == 0) return CUDA_SUCCESS;
    if (!sim::device_range(src, n, call, "source") || !sim::device_range(dst, n, call, "destination")) return CUDA_ERROR_INVALID_VALUE;
    sim::enqueue(s, call, [=] { memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n); });
    if (wait) sim::synchronize(s);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return dtod(dst, src, n, sim::stream_of(nullptr), "cuMemcpyDtoD_v2", true);
}
SIM_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return dtod(dst, src, n, sim::stream_of(s), "cuMemcpyDtoDAsync_v2", false);
}

// ---- modules and launches --------------------------------------------------------------------

SIM_API CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    NEED_CONTEXT("cuModuleLoadData");
    if (!image) return CUDA_ERROR_INVALID_VALUE;
    const auto* b = static_cast<const unsigned char*>(image);
    const bool elf = memcmp(b, ELFMAG, SELFMAG) == 0;
    if (!elf && strstr(static_cast<const char*>(image), ".entry") == nullptr) {
        sim::report("cuModuleLoadData: the image is neither a CUBIN (ELF) nor PTX with an .entry");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    auto* mod = new Module{std::vector<unsigned char>(b, b + image_size(image))};
    *m = reinterpret_cast<CUmodule>(mod);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuModuleLoadDataEx(CUmodule* m, const void* image, unsigned int, CUjit_option*, void**) {
    return cuModuleLoadData(m, image);
}

SIM_API CUresult cuModuleUnload(CUmodule m) {
    NEED_INIT("cuModuleUnload");
    delete reinterpret_cast<Module*>(m);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    NEED_CONTEXT("cuModuleGetFunction");
    auto* mod = reinterpret_cast<Module*>(m);
    // The module must define the entry (its name is in the CUBIN's symbol table or the PTX text),
    // and the stand-in must have compiled a kernel of that name from kernels/.
    if (!memmem(mod->image.data(), mod->image.size(), name, strlen(name))) {
        sim::report("cuModuleGetFunction: the module has no entry %s", name);
        return CUDA_ERROR_NOT_FOUND;
    }
    const sim::Kernel* k = sim::find_kernel(name);
    if (!k) {
        sim::report("cuModuleGetFunction: %s is in the module but not among the kernels the stand-in compiled from kernels/ "
                    "(rebuild it: scripts/sim-gpu.sh)",
                    name);
        return CUDA_ERROR_NOT_FOUND;
    }
    auto* fn = new Function{k, name};
    cubin_resources(mod->image, name, fn);
    planted_registers(fn);
    *f = reinterpret_cast<CUfunction>(fn);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared,
                                CUstream s, void** params, void** extra) {
    NEED_CONTEXT("cuLaunchKernel");
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (extra) {
        sim::report("cuLaunchKernel(%s): arguments through `extra` are not simulated", reinterpret_cast<Function*>(f)->name.c_str());
        return CUDA_ERROR_INVALID_VALUE;
    }
    const auto* fn = reinterpret_cast<Function*>(f);
    if (shared > unsigned(fn->max_dynamic_shared)) {
        sim::report("cuLaunchKernel(%s): %u bytes of dynamic shared memory beyond the function's limit of %d "
                    "(cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) raises it)",
                    fn->name.c_str(), shared, fn->max_dynamic_shared);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return sim::launch_kernel(fn->kernel, gx, gy, gz, bx, by, bz, shared, sim::stream_of(s), params) ? CUDA_SUCCESS
                                                                                                       : CUDA_ERROR_INVALID_VALUE;
}

SIM_API CUresult cuFuncGetAttribute(int* value, CUfunction_attribute a, CUfunction f) {
    NEED_CONTEXT("cuFuncGetAttribute");
    if (!f || !value) return CUDA_ERROR_INVALID_VALUE;
    const auto* fn = reinterpret_cast<Function*>(f);
    const int known = a == CU_FUNC_ATTRIBUTE_NUM_REGS ? fn->registers : a == CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES ? fn->local_bytes : -2;
    if (known == -2) {
        sim::report("cuFuncGetAttribute(%s): attribute %d is not simulated", fn->name.c_str(), int(a));
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (known < 0) {
        sim::report("cuFuncGetAttribute(%s): the module is not a CUBIN with its .nv.info, so its resources are not known", fn->name.c_str());
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    *value = known;
    return CUDA_SUCCESS;
}

// An H100's (and H200's) opt-in limit of shared memory per block.
constexpr int kMaxSharedPerBlock = 227 << 10;

SIM_API CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int value) {
    NEED_CONTEXT("cuFuncSetAttribute");
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    auto* fn = reinterpret_cast<Function*>(f);
    if (a != CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        sim::report("cuFuncSetAttribute(%s): attribute %d is not simulated", fn->name.c_str(), int(a));
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (value < 0 || value > kMaxSharedPerBlock) {
        sim::report("cuFuncSetAttribute(%s): %d bytes of dynamic shared memory outside [0, %d]", fn->name.c_str(), value, kMaxSharedPerBlock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    fn->max_dynamic_shared = value;
    return CUDA_SUCCESS;
}

// The host-side encoding of a TMA descriptor: the SIMT stand-in's (kernels.cpp), after the checks
// on the address the stand-in cannot make (device memory of the calling process, every row of
// the tensor inside one allocation).
SIM_API CUresult cuTensorMapEncodeTiled(CUtensorMap* map, CUtensorMapDataType dtype, cuuint32_t rank, void* address, const cuuint64_t* dims,
                                        const cuuint64_t* strides, const cuuint32_t* box, const cuuint32_t* elem_strides,
                                        CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle, CUtensorMapL2promotion,
                                        CUtensorMapFloatOOBfill oob) {
    NEED_INIT("cuTensorMapEncodeTiled");
    if (!map || !dims || !box || !elem_strides || (rank > 1 && !strides)) {
        sim::report("cuTensorMapEncodeTiled: a null argument");
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (rank == 2) {
        const uint64_t bytes = (dims[1] - 1) * strides[0] + dims[0] * 2;
        if (!sim::device_range(reinterpret_cast<uint64_t>(address), bytes, "cuTensorMapEncodeTiled", "the tensor")) return CUDA_ERROR_INVALID_VALUE;
    }
    // cuuint64_t is unsigned long here, unsigned long long in the stand-in: the same 64 bits.
    static_assert(sizeof(cuuint64_t) == sizeof(unsigned long long));
    unsigned long long d[5] = {}, st[4] = {};
    for (unsigned i = 0; i < rank && i < 5; i++) d[i] = dims[i];
    for (unsigned i = 0; i + 1 < rank && i < 4; i++) st[i] = strides[i];
    char why[256];
    if (sim::encode_tensor_map(map, int(dtype), rank, address, d, st, box, elem_strides, int(interleave), int(swizzle), int(oob), why,
                               sizeof why) != 0) {
        sim::report("cuTensorMapEncodeTiled: %s", why);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

// ---- streams and events ----------------------------------------------------------------------

SIM_API CUresult cuStreamCreate(CUstream* s, unsigned int) {
    NEED_CONTEXT("cuStreamCreate");
    *s = reinterpret_cast<CUstream>(sim::new_stream());
    return CUDA_SUCCESS;
}

SIM_API CUresult cuStreamCreateWithPriority(CUstream* s, unsigned int flags, int) { return cuStreamCreate(s, flags); }

SIM_API CUresult cuStreamDestroy_v2(CUstream) {
    NEED_INIT("cuStreamDestroy_v2");
    return CUDA_SUCCESS; // the queued work still completes, as the driver's does
}

SIM_API CUresult cuStreamSynchronize(CUstream s) {
    NEED_INIT("cuStreamSynchronize");
    sim::synchronize(sim::stream_of(s));
    return CUDA_SUCCESS;
}

SIM_API CUresult cuStreamQuery(CUstream s) {
    NEED_INIT("cuStreamQuery");
    return sim::idle(sim::stream_of(s)) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

SIM_API CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void* data) {
    NEED_CONTEXT("cuLaunchHostFunc");
    sim::enqueue(sim::stream_of(s), "cuLaunchHostFunc", [=] { fn(data); });
    return CUDA_SUCCESS;
}

SIM_API CUresult cuEventCreate(CUevent* e, unsigned int flags) {
    NEED_CONTEXT("cuEventCreate");
    auto* ev = new Event;
    ev->flags = flags;
    std::lock_guard<std::mutex> g(g_events_mutex);
    g_events.insert(ev);
    *e = reinterpret_cast<CUevent>(ev);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuEventDestroy_v2(CUevent e) {
    NEED_INIT("cuEventDestroy_v2");
    std::lock_guard<std::mutex> g(g_events_mutex);
    // Kept allocated: a wait already queued on it still reads it.
    if (!g_events.erase(reinterpret_cast<Event*>(e))) {
        sim::report("cuEventDestroy_v2: %p is not a live event (destroyed twice?)", (void*)e);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    return CUDA_SUCCESS;
}

SIM_API CUresult cuEventRecord(CUevent e, CUstream s) {
    NEED_INIT("cuEventRecord");
    Event* ev = event_of(e, "cuEventRecord");
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    uint64_t gen;
    {
        std::lock_guard<std::mutex> g(ev->m);
        gen = ++ev->recorded;
    }
    sim::enqueue(sim::stream_of(s), "cuEventRecord", [ev, gen] {
        {
            std::lock_guard<std::mutex> g(ev->m);
            ev->completed = std::max(ev->completed, gen);
            ev->at_ms = now_ms();
        }
        ev->cv.notify_all();
    });
    return CUDA_SUCCESS;
}

SIM_API CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int) {
    NEED_INIT("cuStreamWaitEvent");
    Event* ev = event_of(e, "cuStreamWaitEvent");
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    // The wait binds to the event's most recent record at the time of this call; recording the
    // event again afterwards does not change what this wait waits for.
    uint64_t gen;
    {
        std::lock_guard<std::mutex> g(ev->m);
        gen = ev->recorded;
    }
    if (gen == 0) return CUDA_SUCCESS; // never recorded: nothing to wait for
    sim::enqueue(sim::stream_of(s), "cuStreamWaitEvent", [ev, gen] {
        std::unique_lock<std::mutex> g(ev->m);
        ev->cv.wait(g, [&] { return ev->completed >= gen; });
    });
    return CUDA_SUCCESS;
}

SIM_API CUresult cuEventQuery(CUevent e) {
    NEED_INIT("cuEventQuery");
    Event* ev = event_of(e, "cuEventQuery");
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    std::lock_guard<std::mutex> g(ev->m);
    return ev->completed >= ev->recorded ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

SIM_API CUresult cuEventSynchronize(CUevent e) {
    NEED_INIT("cuEventSynchronize");
    Event* ev = event_of(e, "cuEventSynchronize");
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    std::unique_lock<std::mutex> g(ev->m);
    const uint64_t gen = ev->recorded;
    ev->cv.wait(g, [&] { return ev->completed >= gen; });
    return CUDA_SUCCESS;
}

static CUresult elapsed(float* ms, CUevent a, CUevent b, const char* call) {
    NEED_INIT(call);
    Event* s = event_of(a, call);
    Event* e = event_of(b, call);
    if (!s || !e) return CUDA_ERROR_INVALID_HANDLE;
    if ((s->flags | e->flags) & CU_EVENT_DISABLE_TIMING) {
        sim::report("%s: an event created with CU_EVENT_DISABLE_TIMING", call);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    std::scoped_lock g(s->m, e->m);
    if (s->recorded == 0 || e->recorded == 0) {
        sim::report("%s: an event that was never recorded", call);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (s->completed < s->recorded || e->completed < e->recorded) return CUDA_ERROR_NOT_READY;
    *ms = float(e->at_ms - s->at_ms);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return elapsed(ms, a, b, "cuEventElapsedTime"); }
SIM_API CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return elapsed(ms, a, b, "cuEventElapsedTime_v2"); }

// ---- errors --------------------------------------------------------------------------------

static const char* error_name(CUresult r) {
    switch (r) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
    default: return nullptr;
    }
}

SIM_API CUresult cuGetErrorName(CUresult r, const char** s) {
    *s = error_name(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SIM_API CUresult cuGetErrorString(CUresult r, const char** s) {
    switch (r) {
    case CUDA_ERROR_INVALID_VALUE: *s = "invalid argument (the simulated GPU's stderr names the call and the operand)"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "out of memory (simulated device; RINGBENCH_SIM_MEMORY)"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *s = "invalid device context"; break;
    default: *s = error_name(r); return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

// NVRTC looks this undocumented entry point up in whatever libcuda it can load, and without it
// crashes; refusing every table makes it compile as it does on a machine with no driver at all.
SIM_API CUresult cuGetExportTable(const void** table, const CUuuid*) {
    if (table) *table = nullptr;
    return CUDA_ERROR_NOT_SUPPORTED;
}
