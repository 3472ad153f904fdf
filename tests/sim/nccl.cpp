// libnccl.so.2 of the simulated GPU: communicators between processes through a shared-memory
// segment named from the unique id, with NCCL's semantics where ringbench depends on them:
//  - every operation runs in its stream's order (queued on the simulated stream);
//  - a send completes only once the peer's matching receive has been posted (a rendezvous), so
//    ungrouped sends in a cycle deadlock as they can on real NCCL; the operations of one
//    ncclGroupStart/End progress together and cannot;
//  - the operations on a communicator pair up by the order in which they were called;
//  - two ranks of a communicator on one device are refused, as NCCL refuses them.
// An operation that waits longer than RINGBENCH_SIM_NCCL_TIMEOUT_S (60 s) is reported with its
// rank, peer and size, and the communicator's asynchronous error is set; it keeps waiting, as a
// real hang does, until the communicator is aborted. Types and codes are NCCL's (nccl.h; written
// out here with the values cudarc's bindings carry, as CI has no NCCL headers).
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "sim.h"

#define SIM_API extern "C" __attribute__((visibility("default")))

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
} ncclResult_t;
typedef enum {
    ncclInt8 = 0,
    ncclUint8 = 1,
    ncclInt32 = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6,
    ncclFloat32 = 7,
    ncclFloat64 = 8,
    ncclBfloat16 = 9,
} ncclDataType_t;
typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;
typedef struct {
    char internal[128];
} ncclUniqueId;

namespace {

const size_t kMaxRanks = 64;
const size_t kChunk = 256 << 10; // bytes per point-to-point channel's staging buffer
const size_t kSlot = 256 << 10;  // bytes per rank's collective slot

// A channel carries the messages of one ordered pair of ranks, one message at a time.
struct Channel {
    std::atomic<uint64_t> recv_posted; // receives the receiver has posted (rendezvous)
    std::atomic<uint64_t> size_seq;    // messages whose size the sender has published
    std::atomic<uint64_t> size;
    std::atomic<uint64_t> produced, consumed; // chunks, cumulative
    unsigned char data[kChunk];
};

struct Header {
    std::atomic<uint32_t> nranks, arrived;
    std::atomic<int32_t> device_plus_one[kMaxRanks];
    std::atomic<uint64_t> written[kMaxRanks], read[kMaxRanks]; // collective steps per rank
};

size_t segment_bytes(int n) {
    return sizeof(Header) + sizeof(Channel) * size_t(n) * size_t(n) + kSlot * size_t(n);
}

struct Comm {
    Header* h;
    int rank, nranks, device;
    std::atomic<bool> aborted{false};
    std::atomic<int> async_error{ncclSuccess};
    std::mutex m;
    // Assigned when an operation is called (the order NCCL pairs them by) ...
    uint64_t sends_called[kMaxRanks] = {}, recvs_called[kMaxRanks] = {}, steps_called = 0;
    // ... and advanced as they complete, so each channel's messages run in that order.
    std::atomic<uint64_t> sends_done[kMaxRanks] = {}, recvs_done[kMaxRanks] = {}, steps_done{0};

    Channel& channel(int from, int to) {
        auto* base = reinterpret_cast<unsigned char*>(h) + sizeof(Header);
        return reinterpret_cast<Channel*>(base)[size_t(from) * nranks + to];
    }
    unsigned char* slot(int r) {
        return reinterpret_cast<unsigned char*>(h) + sizeof(Header) + sizeof(Channel) * size_t(nranks) * nranks + kSlot * size_t(r);
    }
};

size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    default: return 8;
    }
}


double combine(double a, double b, ncclRedOp_t op) {
    switch (op) {
    case ncclProd: return a * b;
    case ncclMax: return std::max(a, b);
    case ncclMin: return std::min(a, b);
    default: return a + b; // sum, and avg before its division
    }
}

// out[i] = reduction over the ranks' slots of element i, in rank order (so every rank computes
// the same bits); BF16 and FP32 accumulate in FP32 and round once.
void reduce_chunk(Comm* c, void* out, size_t count, ncclDataType_t t, ncclRedOp_t op) {
    for (size_t i = 0; i < count; i++) {
        double acc = 0;
        float facc = 0;
        for (int r = 0; r < c->nranks; r++) {
            const unsigned char* s = c->slot(r);
            double v;
            switch (t) {
            case ncclBfloat16: v = sim::bf16_bits_to_float(reinterpret_cast<const uint16_t*>(s)[i]); break;
            case ncclFloat32: v = reinterpret_cast<const float*>(s)[i]; break;
            case ncclFloat64: v = reinterpret_cast<const double*>(s)[i]; break;
            case ncclInt32: v = reinterpret_cast<const int32_t*>(s)[i]; break;
            case ncclInt64: v = double(reinterpret_cast<const int64_t*>(s)[i]); break;
            case ncclUint8: v = s[i]; break;
            default: v = reinterpret_cast<const uint32_t*>(s)[i]; break;
            }
            if (t == ncclBfloat16 || t == ncclFloat32)
                facc = r == 0 ? float(v) : float(combine(facc, float(v), op));
            else
                acc = r == 0 ? v : combine(acc, v, op);
        }
        if (op == ncclAvg) {
            facc /= float(c->nranks);
            acc /= c->nranks;
        }
        switch (t) {
        case ncclBfloat16: static_cast<uint16_t*>(out)[i] = sim::float_to_bf16_bits(facc); break;
        case ncclFloat32: static_cast<float*>(out)[i] = facc; break;
        case ncclFloat64: static_cast<double*>(out)[i] = acc; break;
        case ncclInt32: static_cast<int32_t*>(out)[i] = int32_t(acc); break;
        case ncclInt64: static_cast<int64_t*>(out)[i] = int64_t(acc); break;
        case ncclUint8: static_cast<uint8_t*>(out)[i] = uint8_t(acc); break;
        default: static_cast<uint32_t*>(out)[i] = uint32_t(acc); break;
        }
    }
}

enum class Kind { Send, Recv, AllReduce, AllGather, Broadcast };

const char* kind_name(Kind k) {
    switch (k) {
    case Kind::Send: return "ncclSend";
    case Kind::Recv: return "ncclRecv";
    case Kind::AllReduce: return "ncclAllReduce";
    case Kind::AllGather: return "ncclAllGather";
    default: return "ncclBroadcast";
    }
}

// One operation and how far it has got. Progress never blocks: the group's loop polls them all.
struct Op {
    Kind kind;
    Comm* c;
    const unsigned char* send = nullptr;
    unsigned char* recv = nullptr;
    size_t count = 0; // elements (per rank for all-gather)
    ncclDataType_t type = ncclBfloat16;
    ncclRedOp_t red = ncclSum;
    int peer = -1; // p2p peer, or broadcast root
    uint64_t seq = 0; // message number on its channel, or first collective step
    // progress
    int stage = 0;
    size_t moved = 0, expected = 0;
    uint64_t step = 0, steps = 0;
    bool done = false, reported = false;

    size_t bytes() const { return count * type_size(type); }

    // Advance as far as possible without waiting; true if anything moved.
    bool progress() {
        switch (kind) {
        case Kind::Send: return progress_send();
        case Kind::Recv: return progress_recv();
        default: return progress_collective();
        }
    }

    bool progress_send() {
        if (c->sends_done[peer].load() != seq) return false; // an earlier message to this peer first
        Channel& ch = c->channel(c->rank, peer);
        bool moved_any = false;
        if (stage == 0) {
            if (ch.recv_posted.load(std::memory_order_acquire) < seq + 1) return false; // the peer has not posted its receive
            ch.size.store(bytes());
            ch.size_seq.store(seq + 1, std::memory_order_release);
            stage = 1, moved_any = true;
        }
        while (moved < bytes() && ch.produced.load(std::memory_order_acquire) == ch.consumed.load(std::memory_order_acquire)) {
            const size_t n = std::min(kChunk, bytes() - moved);
            memcpy(ch.data, send + moved, n);
            moved += n;
            ch.produced.fetch_add(1, std::memory_order_release);
            moved_any = true;
        }
        if (moved == bytes()) finish(c->sends_done[peer]);
        return moved_any || done;
    }

    bool progress_recv() {
        if (c->recvs_done[peer].load() != seq) return false;
        Channel& ch = c->channel(peer, c->rank);
        bool moved_any = false;
        if (stage == 0) {
            ch.recv_posted.store(seq + 1, std::memory_order_release);
            stage = 1, moved_any = true;
        }
        if (stage == 1) {
            if (ch.size_seq.load(std::memory_order_acquire) < seq + 1) return moved_any;
            expected = ch.size.load();
            if (expected != bytes()) {
                sim::report("rank %d: ncclRecv of %zu bytes from peer %d, which sent %zu: the sizes of a matched send and receive "
                            "must agree",
                            c->rank, bytes(), peer, expected);
                c->async_error.store(ncclInvalidUsage);
            }
            stage = 2, moved_any = true;
        }
        while (moved < expected && ch.produced.load(std::memory_order_acquire) > ch.consumed.load(std::memory_order_acquire)) {
            const size_t n = std::min(kChunk, expected - moved);
            if (moved < bytes()) memcpy(recv + moved, ch.data, std::min(n, bytes() - moved));
            moved += n;
            ch.consumed.fetch_add(1, std::memory_order_release);
            moved_any = true;
        }
        if (moved == expected) finish(c->recvs_done[peer]);
        return moved_any || done;
    }

    // Step t of a collective: write this rank's chunk once every rank has read step t - 1, then
    // read every rank's chunk once every rank has written step t.
    bool progress_collective() {
        bool moved_any = false;
        const size_t per_step = std::max<size_t>(kSlot / type_size(type), 1);
        while (!done) {
            if (c->steps_done.load() != seq + step) return moved_any;
            const uint64_t t = seq + step;
            const size_t off = size_t(step) * per_step, n = std::min(per_step, count - std::min(count, off));
            if (stage == 0) {
                for (int r = 0; r < c->nranks; r++)
                    if (c->h->read[r].load(std::memory_order_acquire) < t) return moved_any;
                const bool writes = kind != Kind::Broadcast || c->rank == peer;
                if (writes && n) memcpy(c->slot(c->rank), send + off * type_size(type), n * type_size(type));
                c->h->written[c->rank].store(t + 1, std::memory_order_release);
                stage = 1, moved_any = true;
            }
            for (int r = 0; r < c->nranks; r++)
                if (c->h->written[r].load(std::memory_order_acquire) < t + 1) return moved_any;
            const size_t es = type_size(type);
            if (n) {
                if (kind == Kind::AllReduce)
                    reduce_chunk(c, recv + off * es, n, type, red);
                else if (kind == Kind::AllGather)
                    for (int r = 0; r < c->nranks; r++) memcpy(recv + (size_t(r) * count + off) * es, c->slot(r), n * es);
                else
                    memcpy(recv + off * es, c->slot(peer), n * es);
            }
            c->h->read[c->rank].store(t + 1, std::memory_order_release);
            stage = 0, moved_any = true;
            step++;
            c->steps_done.fetch_add(1);
            if (step == steps) done = true;
        }
        return true;
    }

    void finish(std::atomic<uint64_t>& counter) {
        if (!done) counter.fetch_add(1);
        done = true;
    }

    void report_wait(double waited) {
        if (reported) return;
        reported = true;
        c->async_error.store(ncclSystemError);
        if (kind == Kind::Send)
            sim::report("rank %d of %d: ncclSend of %zu bytes to peer %d has waited %.0f s for the peer's matching ncclRecv (a send "
                        "completes only when the peer receives: sends in a cycle outside ncclGroupStart/End deadlock)",
                        c->rank, c->nranks, bytes(), peer, waited);
        else if (kind == Kind::Recv)
            sim::report("rank %d of %d: ncclRecv of %zu bytes from peer %d has waited %.0f s for the peer's matching ncclSend", c->rank,
                        c->nranks, bytes(), peer, waited);
        else {
            std::string missing;
            for (int r = 0; r < c->nranks; r++)
                if (c->h->written[r].load() < seq + step + 1) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
            sim::report("rank %d of %d: %s of %zu bytes has waited %.0f s for rank(s) %s to join it", c->rank, c->nranks, kind_name(kind),
                        bytes(), waited, missing.empty() ? "(all joined; waiting for the previous step)" : missing.c_str());
        }
    }
};

// Run a group's operations to completion, polling them together.
void run_group(std::vector<Op>& ops) {
    auto last = std::chrono::steady_clock::now();
    int idle = 0;
    for (;;) {
        bool all_done = true, any = false;
        for (Op& op : ops) {
            if (op.done || op.c->aborted.load()) continue;
            any |= op.progress();
            all_done &= op.done;
        }
        bool aborted = false;
        for (Op& op : ops) aborted |= !op.done && op.c->aborted.load();
        if (all_done || aborted) return;
        const auto now = std::chrono::steady_clock::now();
        if (any) {
            last = now, idle = 0;
            continue;
        }
        const double waited = std::chrono::duration<double>(now - last).count();
        if (waited > sim::settings().nccl_timeout_s)
            for (Op& op : ops)
                if (!op.done) op.report_wait(waited);
        if (++idle > 64) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, nullptr);
        }
    }
}

thread_local int t_group_depth = 0;
thread_local std::vector<std::pair<void*, Op>> t_group; // (stream, op)

std::string op_label(const std::vector<Op>& ops) {
    std::string s = ops.size() == 1 ? kind_name(ops[0].kind) : "ncclGroup(";
    if (ops.size() > 1) {
        for (size_t i = 0; i < ops.size(); i++) s += std::string(i ? ", " : "") + kind_name(ops[i].kind);
        s += ")";
    }
    return s;
}

void launch(std::vector<std::pair<void*, Op>> calls) {
    // One queued operation per stream, holding that stream's share of the group.
    std::map<void*, std::vector<Op>> by_stream;
    for (auto& [s, op] : calls) by_stream[s].push_back(op);
    for (auto& [s, ops] : by_stream) {
        const std::string label = op_label(ops);
        auto shared = std::make_shared<std::vector<Op>>(std::move(ops));
        sim::enqueue(sim::stream_of(s), label, [shared] { run_group(*shared); });
    }
}

ncclResult_t submit(void* stream, Op op) {
    if (op.c->aborted.load()) {
        sim::report("%s on an aborted or destroyed communicator", kind_name(op.kind));
        return ncclInvalidUsage;
    }
    {
        std::lock_guard<std::mutex> g(op.c->m);
        if (op.kind == Kind::Send)
            op.seq = op.c->sends_called[op.peer]++;
        else if (op.kind == Kind::Recv)
            op.seq = op.c->recvs_called[op.peer]++;
        else {
            const size_t per_step = std::max<size_t>(kSlot / type_size(op.type), 1);
            op.steps = std::max<uint64_t>(1, (op.count + per_step - 1) / per_step);
            op.seq = op.c->steps_called;
            op.c->steps_called += op.steps;
        }
    }
    if (t_group_depth > 0)
        t_group.push_back({stream, op});
    else
        launch({{stream, op}});
    return ncclSuccess;
}

bool device_buffer(const void* p, size_t bytes, const char* call, const char* what) {
    return bytes == 0 || sim::device_range(uint64_t(uintptr_t(p)), bytes, call, what);
}

Comm* comm_of(void* comm, const char* call) {
    if (!comm) sim::report("%s: a null communicator", call);
    return static_cast<Comm*>(comm);
}

} // namespace

SIM_API ncclResult_t ncclGetVersion(int* v) {
    *v = 22800; // the API it stands in for; `info` labels it as the simulated device's
    return ncclSuccess;
}

SIM_API ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    memset(id->internal, 0, sizeof id->internal);
    std::random_device rd;
    char name[64];
    snprintf(name, sizeof name, "/ringbench-sim-nccl-%08x%08x%08x", rd(), rd(), rd());
    memcpy(id->internal, name, strlen(name));
    return ncclSuccess;
}

SIM_API const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclSystemError: return "unhandled system error (simulated NCCL: see its report on stderr)";
    case ncclInvalidArgument: return "invalid argument (simulated NCCL: see its report on stderr)";
    case ncclInvalidUsage: return "invalid usage (simulated NCCL: see its report on stderr)";
    default: return "simulated NCCL error";
    }
}

SIM_API const char* ncclGetLastError(void*) { return "see the simulated NCCL's report on stderr"; }

SIM_API ncclResult_t ncclCommInitRank(void** out, int nranks, ncclUniqueId id, int rank) {
    const char* call = "ncclCommInitRank";
    if (nranks < 1 || nranks > int(kMaxRanks) || rank < 0 || rank >= nranks) {
        sim::report("%s: rank %d of %d (the simulation takes 1 to %zu ranks)", call, rank, nranks, kMaxRanks);
        return ncclInvalidArgument;
    }
    if (strncmp(id.internal, "/ringbench-sim-nccl-", 20) != 0) {
        sim::report("%s: the unique id was not made by the simulated ncclGetUniqueId", call);
        return ncclInvalidArgument;
    }
    if (!sim::context_current(call)) return ncclUnhandledCudaError;
    const int device = sim::current_device(); // the current context's, as NCCL takes it
    char name[129];
    memcpy(name, id.internal, 128);
    name[128] = 0;
    const int fd = shm_open(name, O_RDWR | O_CREAT, 0600);
    if (fd < 0) {
        sim::report("%s: shm_open(%s): %s", call, name, strerror(errno));
        return ncclSystemError;
    }
    const size_t bytes = segment_bytes(nranks);
    if (ftruncate(fd, off_t(bytes)) != 0) {
        sim::report("%s: sizing %s to %zu bytes: %s", call, name, bytes, strerror(errno));
        close(fd);
        return ncclSystemError;
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        sim::report("%s: mapping %s: %s", call, name, strerror(errno));
        return ncclSystemError;
    }
    auto* h = static_cast<Header*>(p);
    uint32_t zero = 0;
    if (!h->nranks.compare_exchange_strong(zero, uint32_t(nranks)) && h->nranks.load() != uint32_t(nranks)) {
        sim::report("%s: rank %d says %d ranks, another rank said %u", call, rank, nranks, h->nranks.load());
        return ncclInvalidArgument;
    }
    h->device_plus_one[rank].store(device + 1);
    h->arrived.fetch_add(1);
    const auto t0 = std::chrono::steady_clock::now();
    while (h->arrived.load() < uint32_t(nranks)) {
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (waited > sim::settings().nccl_timeout_s) {
            sim::report("%s: rank %d: %u of %d ranks arrived in %.0f s", call, rank, h->arrived.load(), nranks, waited);
            return ncclSystemError;
        }
        usleep(200);
    }
    // Everyone has it mapped: the name can go, so nothing is left behind however the job ends.
    if (rank == 0) shm_unlink(name);
    for (int r = 0; r < nranks; r++)
        if (r != rank && h->device_plus_one[r].load() == device + 1) {
            sim::report("%s: ranks %d and %d are both on simulated device %d: NCCL refuses two ranks of a communicator on one GPU "
                        "(\"Duplicate GPU detected\")",
                        call, std::min(r, rank), std::max(r, rank), device);
            return ncclInvalidUsage;
        }
    auto* c = new Comm;
    c->h = h, c->rank = rank, c->nranks = nranks, c->device = device;
    *out = c;
    return ncclSuccess;
}

SIM_API ncclResult_t ncclCommAbort(void* comm) {
    Comm* c = comm_of(comm, "ncclCommAbort");
    if (!c) return ncclInvalidArgument;
    c->aborted.store(true); // a waiting operation returns; the mapping stays for it
    return ncclSuccess;
}

SIM_API ncclResult_t ncclCommDestroy(void* comm) { return ncclCommAbort(comm); }
SIM_API ncclResult_t ncclCommFinalize(void* comm) { return comm_of(comm, "ncclCommFinalize") ? ncclSuccess : ncclInvalidArgument; }

SIM_API ncclResult_t ncclCommGetAsyncError(void* comm, ncclResult_t* e) {
    Comm* c = comm_of(comm, "ncclCommGetAsyncError");
    if (!c) return ncclInvalidArgument;
    *e = ncclResult_t(c->async_error.load());
    return ncclSuccess;
}

SIM_API ncclResult_t ncclCommCount(void* comm, int* n) {
    Comm* c = comm_of(comm, "ncclCommCount");
    if (!c) return ncclInvalidArgument;
    *n = c->nranks;
    return ncclSuccess;
}

SIM_API ncclResult_t ncclCommUserRank(void* comm, int* r) {
    Comm* c = comm_of(comm, "ncclCommUserRank");
    if (!c) return ncclInvalidArgument;
    *r = c->rank;
    return ncclSuccess;
}

SIM_API ncclResult_t ncclCommCuDevice(void* comm, int* d) {
    Comm* c = comm_of(comm, "ncclCommCuDevice");
    if (!c) return ncclInvalidArgument;
    *d = c->device;
    return ncclSuccess;
}

SIM_API ncclResult_t ncclGroupStart() {
    t_group_depth++;
    return ncclSuccess;
}

SIM_API ncclResult_t ncclGroupEnd() {
    if (t_group_depth == 0) {
        sim::report("ncclGroupEnd without ncclGroupStart");
        return ncclInvalidUsage;
    }
    if (--t_group_depth == 0) {
        // A planted failure (RINGBENCH_SIM_NCCL_FAIL_GROUP_END): the group's operations are
        // dropped unlaunched, as a real ncclGroupEnd that fails leaves its peers waiting.
        static std::atomic<long> ended{0};
        if (++ended == sim::settings().fail_group_end) {
            t_group.clear();
            sim::report("ncclGroupEnd: the planted failure (RINGBENCH_SIM_NCCL_FAIL_GROUP_END=%ld)", sim::settings().fail_group_end);
            return ncclSystemError;
        }
        launch(std::move(t_group)), t_group.clear();
    }
    return ncclSuccess;
}

static ncclResult_t p2p(Kind kind, const void* buf, size_t count, ncclDataType_t t, int peer, void* comm, void* stream) {
    const char* call = kind_name(kind);
    Comm* c = comm_of(comm, call);
    if (!c) return ncclInvalidArgument;
    if (peer < 0 || peer >= c->nranks) {
        sim::report("%s: rank %d: peer %d outside the communicator's %d ranks", call, c->rank, peer, c->nranks);
        return ncclInvalidArgument;
    }
    if (!device_buffer(buf, count * type_size(t), call, kind == Kind::Send ? "sendbuff" : "recvbuff")) return ncclInvalidArgument;
    Op op{kind, c};
    op.count = count, op.type = t, op.peer = peer;
    if (kind == Kind::Send)
        op.send = static_cast<const unsigned char*>(buf);
    else
        op.recv = static_cast<unsigned char*>(const_cast<void*>(buf));
    return submit(stream, op);
}

SIM_API ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t t, int peer, void* comm, void* stream) {
    return p2p(Kind::Send, buf, count, t, peer, comm, stream);
}

SIM_API ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t t, int peer, void* comm, void* stream) {
    return p2p(Kind::Recv, buf, count, t, peer, comm, stream);
}

static ncclResult_t collective(Kind kind, const void* send, void* recv, size_t count, ncclDataType_t t, ncclRedOp_t op, int root,
                               void* comm, void* stream) {
    const char* call = kind_name(kind);
    Comm* c = comm_of(comm, call);
    if (!c) return ncclInvalidArgument;
    const size_t bytes = count * type_size(t), out = kind == Kind::AllGather ? bytes * size_t(c->nranks) : bytes;
    const bool sends = kind != Kind::Broadcast || c->rank == root;
    if ((sends && !device_buffer(send, bytes, call, "sendbuff")) || !device_buffer(recv, out, call, "recvbuff")) return ncclInvalidArgument;
    Op o{kind, c};
    o.send = static_cast<const unsigned char*>(send), o.recv = static_cast<unsigned char*>(recv);
    o.count = count, o.type = t, o.red = op, o.peer = root;
    return submit(stream, o);
}

SIM_API ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t t, ncclRedOp_t op, void* comm, void* stream) {
    return collective(Kind::AllReduce, send, recv, count, t, op, -1, comm, stream);
}

SIM_API ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t t, void* comm, void* stream) {
    return collective(Kind::AllGather, send, recv, count, t, ncclSum, -1, comm, stream);
}

SIM_API ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t, int root, void* comm, void* stream) {
    return collective(Kind::Broadcast, send, recv, count, t, ncclSum, root, comm, stream);
}
