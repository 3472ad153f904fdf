// The simulated GPU's memory and streams (sim.h).
#include "sim.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace sim {

static void vreport(const char* fmt, va_list ap) {
    char line[2048];
    vsnprintf(line, sizeof line, fmt, ap);
    fprintf(stderr, "ringbench-sim[%d]: %s\n", int(getpid()), line);
    fflush(stderr);
}

void report(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
}

void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    abort();
}

// "16G", "512M", "1048576": bytes.
static uint64_t parse_bytes(const char* name, const char* text) {
    char* end = nullptr;
    const double v = strtod(text, &end);
    uint64_t unit = 1;
    if (end && (*end == 'G' || *end == 'g')) unit = 1ull << 30;
    if (end && (*end == 'M' || *end == 'm')) unit = 1ull << 20;
    if (end && (*end == 'K' || *end == 'k')) unit = 1ull << 10;
    if (end == text || v <= 0) fatal("%s=%s: expected a size in bytes, e.g. 16G or 512M", name, text);
    return uint64_t(v * double(unit));
}

const Settings& settings() {
    static const Settings s = [] {
        Settings s{16ull << 30, false, 60.0, 0};
        if (const char* m = getenv("RINGBENCH_SIM_MEMORY")) s.memory_bytes = parse_bytes("RINGBENCH_SIM_MEMORY", m);
        if (const char* d = getenv("RINGBENCH_SIM_DELAY")) s.delay = strcmp(d, "0") != 0 && *d;
        if (const char* t = getenv("RINGBENCH_SIM_NCCL_TIMEOUT_S")) {
            s.nccl_timeout_s = atof(t);
            if (s.nccl_timeout_s <= 0) fatal("RINGBENCH_SIM_NCCL_TIMEOUT_S=%s: expected seconds > 0", t);
        }
        if (const char* n = getenv("RINGBENCH_SIM_NCCL_FAIL_GROUP_END")) {
            s.fail_group_end = atol(n);
            if (s.fail_group_end <= 0) fatal("RINGBENCH_SIM_NCCL_FAIL_GROUP_END=%s: expected a count > 0", n);
        }
        return s;
    }();
    return s;
}

// ---- device memory -------------------------------------------------------------------------

static const uint64_t kRegionBytes = 1ull << 40; // address space only: PROT_NONE, no reserve
static const uint64_t kAlign = 256;              // cuMemAlloc's alignment guarantee

struct Allocation {
    uint64_t bytes;
    bool live;
    uint64_t map_start, map_bytes; // the accessible pages
};

struct Memory {
    std::mutex m;
    uint64_t base = 0, next = 0, used = 0;
    std::map<uint64_t, Allocation> allocs; // by start address, freed ones kept to name them
    std::map<uintptr_t, size_t> pinned;
};

static thread_local const char* t_current_op = nullptr;
void set_current_op(const char* what) { t_current_op = what; }

static Memory& memory();
static struct sigaction g_prev_segv, g_prev_bus;

// A fault inside the region: name the operation and the allocation it missed, then abort.
static void on_fault(int sig, siginfo_t* info, void*) {
    const uint64_t a = uint64_t(uintptr_t(info->si_addr));
    Memory& mem = memory(); // no lock: the process is about to end, and a lock may be held
    if (a < mem.base || a >= mem.base + kRegionBytes) {
        // Not ours: the handler that was there before (Rust's stack-overflow report, or the
        // default action) takes the fault when the instruction runs again.
        sigaction(sig, sig == SIGSEGV ? &g_prev_segv : &g_prev_bus, nullptr);
        return;
    }
    char why[256] = "no allocation there";
    auto it = mem.allocs.upper_bound(a);
    if (it != mem.allocs.begin()) {
        --it;
        const uint64_t end = it->first + it->second.bytes;
        if (!it->second.live && a >= it->second.map_start && a < it->second.map_start + it->second.map_bytes)
            snprintf(why, sizeof why, "inside an allocation of %llu bytes at 0x%llx that was freed", (unsigned long long)it->second.bytes,
                     (unsigned long long)it->first);
        else if (a >= end)
            snprintf(why, sizeof why, "%llu bytes past the end of the allocation of %llu bytes at 0x%llx",
                     (unsigned long long)(a - end), (unsigned long long)it->second.bytes, (unsigned long long)it->first);
    }
    if (it != mem.allocs.end() && a < it->first)
        snprintf(why + strlen(why), sizeof why - strlen(why), "; %llu bytes before the allocation at 0x%llx",
                 (unsigned long long)(it->first - a), (unsigned long long)it->first);
    char line[512];
    const int n = snprintf(line, sizeof line, "ringbench-sim[%d]: %s: invalid device address 0x%llx (%s)\n", int(getpid()),
                           t_current_op ? t_current_op : "host code", (unsigned long long)a, why);
    if (write(2, line, size_t(n)) < 0) {
    }
    signal(SIGABRT, SIG_DFL);
    abort();
}

static Memory& memory() {
    static Memory* mem = [] {
        auto* m = new Memory;
        void* p = mmap(nullptr, kRegionBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) fatal("reserving the simulated device's address space: %s", strerror(errno));
        m->base = m->next = uint64_t(uintptr_t(p));
        struct sigaction sa = {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigaction(SIGSEGV, &sa, &g_prev_segv);
        sigaction(SIGBUS, &sa, &g_prev_bus);
        return m;
    }();
    return *mem;
}

uint64_t device_alloc(size_t bytes, const char* call) {
    Memory& mem = memory();
    std::lock_guard<std::mutex> g(mem.m);
    if (mem.used + bytes > settings().memory_bytes) {
        report("%s: %zu bytes refused: %llu of the simulated device's %llu bytes are in use (RINGBENCH_SIM_MEMORY)", call, bytes,
               (unsigned long long)mem.used, (unsigned long long)settings().memory_bytes);
        return 0;
    }
    const uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
    const uint64_t rounded = (std::max<uint64_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
    const uint64_t pages = (rounded + page - 1) / page * page;
    // One inaccessible page before, the data's pages, one after; the data ends at its last page's end.
    const uint64_t start = mem.next + page;
    if (start + pages + page > mem.base + kRegionBytes) {
        report("%s: the simulated device's address space is used up", call);
        return 0;
    }
    if (mprotect(reinterpret_cast<void*>(start), pages, PROT_READ | PROT_WRITE) != 0) {
        report("%s: mprotect: %s", call, strerror(errno));
        return 0;
    }
    mem.next = start + pages;
    const uint64_t ptr = start + pages - rounded;
    mem.allocs[ptr] = {bytes, true, start, pages};
    mem.used += bytes;
    return ptr;
}

bool device_free(uint64_t ptr, const char* call) {
    Memory& mem = memory();
    std::lock_guard<std::mutex> g(mem.m);
    auto it = mem.allocs.find(ptr);
    if (it == mem.allocs.end()) {
        report("%s: 0x%llx is not the start of a device allocation%s", call, (unsigned long long)ptr,
               ptr >= mem.base && ptr < mem.base + kRegionBytes ? "" : " (not device memory at all: a host pointer?)");
        return false;
    }
    if (!it->second.live) {
        report("%s: 0x%llx (%llu bytes) was already freed: a double free", call, (unsigned long long)ptr,
               (unsigned long long)it->second.bytes);
        return false;
    }
    it->second.live = false;
    mem.used -= it->second.bytes;
    void* p = reinterpret_cast<void*>(it->second.map_start);
    madvise(p, it->second.map_bytes, MADV_DONTNEED);
    mprotect(p, it->second.map_bytes, PROT_NONE);
    return true;
}

bool is_device_address(uint64_t ptr) {
    Memory& mem = memory();
    return ptr >= mem.base && ptr < mem.base + kRegionBytes;
}

bool device_range(uint64_t ptr, size_t bytes, const char* call, const char* what) {
    Memory& mem = memory();
    std::lock_guard<std::mutex> g(mem.m);
    if (!(ptr >= mem.base && ptr < mem.base + kRegionBytes)) {
        report("%s: %s 0x%llx is not device memory (a host pointer given for a device pointer?)", call, what, (unsigned long long)ptr);
        return false;
    }
    auto it = mem.allocs.upper_bound(ptr);
    if (it == mem.allocs.begin()) {
        report("%s: %s 0x%llx is in no device allocation", call, what, (unsigned long long)ptr);
        return false;
    }
    --it;
    const uint64_t end = it->first + it->second.bytes;
    if (ptr >= end && bytes > 0) {
        report("%s: %s 0x%llx is in no device allocation (%llu bytes past the one at 0x%llx)", call, what, (unsigned long long)ptr,
               (unsigned long long)(ptr - end), (unsigned long long)it->first);
        return false;
    }
    if (!it->second.live) {
        report("%s: %s 0x%llx is in an allocation that was freed", call, what, (unsigned long long)ptr);
        return false;
    }
    if (ptr + bytes > end) {
        report("%s: %s [0x%llx, +%zu bytes) runs %llu bytes past the end of its allocation of %llu bytes at 0x%llx", call, what,
               (unsigned long long)ptr, bytes, (unsigned long long)(ptr + bytes - end), (unsigned long long)it->second.bytes,
               (unsigned long long)it->first);
        return false;
    }
    return true;
}

uint64_t device_used() {
    Memory& mem = memory();
    std::lock_guard<std::mutex> g(mem.m);
    return mem.used;
}

void* host_alloc(size_t bytes) {
    void* p = malloc(std::max<size_t>(bytes, 1));
    if (!p) return nullptr;
    Memory& mem = memory();
    std::lock_guard<std::mutex> g(mem.m);
    mem.pinned[uintptr_t(p)] = bytes;
    return p;
}

bool host_free(void* p) {
    Memory& mem = memory();
    {
        std::lock_guard<std::mutex> g(mem.m);
        if (mem.pinned.erase(uintptr_t(p)) == 0) return false;
    }
    free(p);
    return true;
}

bool is_pinned(const void* p, size_t bytes) {
    Memory& mem = memory();
    std::lock_guard<std::mutex> g(mem.m);
    auto it = mem.pinned.upper_bound(uintptr_t(p));
    if (it == mem.pinned.begin()) return false;
    --it;
    return uintptr_t(p) + bytes <= it->first + it->second;
}

// ---- streams -------------------------------------------------------------------------------

struct Op {
    std::string name;
    std::function<void()> run;
};

// An in-order queue and the thread that runs it.
struct Stream {
    std::mutex m;
    std::condition_variable cv;
    std::deque<Op> queue;
    uint64_t queued = 0, done = 0;
    std::thread worker;

    Stream() { worker = std::thread([this] { run(); }); }

    void run() {
        std::mt19937_64 rng(std::random_device{}());
        for (;;) {
            Op op;
            {
                std::unique_lock<std::mutex> g(m);
                cv.wait(g, [&] { return !queue.empty(); });
                op = std::move(queue.front());
                queue.pop_front();
            }
            if (settings().delay) {
                // Before every operation: mostly up to half a millisecond, one in ten times 2 to
                // 20 ms, longer than the compute a transfer overlaps. A stream that is not made to
                // wait for another's work then runs ahead of it or behind it at random.
                const bool long_one = rng() % 10 == 0;
                std::this_thread::sleep_for(std::chrono::microseconds(long_one ? 2000 + rng() % 18000 : rng() % 500));
            }
            set_current_op(op.name.c_str());
            op.run();
            set_current_op(nullptr);
            {
                std::lock_guard<std::mutex> g(m);
                done++;
            }
            cv.notify_all();
        }
    }
};

struct Streams {
    std::mutex m;
    std::vector<Stream*> all;
};
static Streams& streams() {
    static Streams* s = new Streams; // never destroyed: workers may run past exit's destructors
    return *s;
}

Stream* new_stream() {
    auto* s = new Stream;
    Streams& ss = streams();
    std::lock_guard<std::mutex> g(ss.m);
    ss.all.push_back(s);
    return s;
}

Stream* stream_of(void* handle) {
    static Stream* null_stream = new_stream();
    const uintptr_t h = uintptr_t(handle);
    if (h == 0 || h == 1 || h == 2) return null_stream; // CU_STREAM_LEGACY, CU_STREAM_PER_THREAD
    return static_cast<Stream*>(handle);
}

void enqueue(Stream* s, std::string name, std::function<void()> op) {
    {
        std::lock_guard<std::mutex> g(s->m);
        s->queue.push_back({std::move(name), std::move(op)});
        s->queued++;
    }
    s->cv.notify_all();
}

void synchronize(Stream* s) {
    std::unique_lock<std::mutex> g(s->m);
    const uint64_t target = s->queued;
    s->cv.wait(g, [&] { return s->done >= target; });
}

bool idle(Stream* s) {
    std::lock_guard<std::mutex> g(s->m);
    return s->done == s->queued;
}

void synchronize_all() {
    std::vector<Stream*> all;
    {
        Streams& ss = streams();
        std::lock_guard<std::mutex> g(ss.m);
        all = ss.all;
    }
    for (Stream* s : all) synchronize(s);
}

} // namespace sim
