//! The CUDA backend's host path on the simulated GPU (tests/sim; docs/testing.md, "The simulated GPU"):
//! stand-ins for libcuda, cuBLAS and NCCL that run the kernels' own sources on the CPU, with
//! device memory that names misuse, streams as threads with a random-delay mode, and NCCL between
//! processes. Here: the stand-ins' own checks, `selftest`, `verify --backend cuda` on 1 and 4
//! ranks over NCCL and MPI with the delay mode on, a `run` whose results say simulated, and a rank
//! that fails or stalls mid-ring over NCCL ending the job.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The environment `scripts/sim-gpu.sh` prints (it builds the stand-ins first when needed), or
/// None where the toolchain is missing and the check is not required.
fn sim_env() -> Option<&'static [(String, String)]> {
    static ENV: OnceLock<Option<Vec<(String, String)>>> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash").arg(root.join("scripts/sim-gpu.sh")).output().expect("bash runs");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(std::env::var_os("RINGBENCH_REQUIRE_KERNEL_CHECK").is_none(), "scripts/sim-gpu.sh failed:\n{why}");
            eprintln!("SKIPPED: the simulated GPU could not be built here:\n{why}");
            return None;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        Some(
            text.lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    })
    .as_deref()
}

/// The simulated GPU's environment with `extra` added (or overriding).
fn env_with<'a>(sim: &'a [(String, String)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<(&str, &str)> =
        sim.iter().filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    env
}

fn value<'a>(sim: &'a [(String, String)], key: &str) -> &'a str {
    &sim.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("sim-gpu.sh sets {key}")).1
}

#[test]
fn the_stand_ins_pass_their_own_checks() {
    let Some(sim) = sim_env() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libs = Path::new(value(sim, "LD_LIBRARY_PATH").split(':').next().unwrap()).to_path_buf();
    let exe = std::env::temp_dir().join(format!("ringbench-sim-standin-{}", std::process::id()));
    let build = Command::new("g++")
        .args(["-std=c++20", "-O1", "-Wall", "-I"])
        .arg(Path::new(value(sim, "CUDA_HOME")).join("include"))
        .arg(root.join("tests/sim/standin_check.cpp"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&libs)
        .args(["-l:libcuda.so.1", "-l:libcublas.so.12", "-l:libnccl.so.2"])
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .output()
        .unwrap();
    assert!(build.status.success(), "g++ standin_check.cpp:\n{}", String::from_utf8_lossy(&build.stderr));
    let run = Command::new("timeout")
        .arg("120")
        .arg(&exe)
        .envs([
            ("RINGBENCH_SIM_DELAY", "1"),
            ("RINGBENCH_SIM_MEMORY", "64M"),
            ("RINGBENCH_SIM_DEVICES", "2"),
            ("RINGBENCH_SIM_NCCL_TIMEOUT_S", "1"),
        ])
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    println!("{out}\n{err}");
    let _ = std::fs::remove_file(&exe);
    assert!(run.status.success() && out.contains("simulated GPU stand-ins: PASS"), "{out}\n{err}");
    assert_eq!(out.matches(" PASS").count(), 39 + 1, "39 cases and the verdict:\n{out}");
    // Each refusal names its call, operand and cause.
    for said in [
        "cuLaunchKernel(add_bf16): invalid device address",
        "bytes past the end of the allocation of 2000 bytes",
        "ncclSend of 4096 bytes to peer 1 has waited 1 s for the peer's matching ncclRecv",
        "cuMemcpyHtoD_v2: destination",
        "runs 1 bytes past the end of its allocation of 1000 bytes",
        "cuMemFree_v2: ",
        "a double free",
        "of the simulated device's 67108864 bytes are in use",
        "cuLaunchKernel(add_bf16): argument 1",
    ] {
        assert!(err.contains(said), "stderr says {said:?}:\n{err}");
    }
}

#[test]
fn selftest_passes_on_the_simulated_gpu_with_random_delays() {
    let Some(sim) = sim_env() else { return };
    let run = common::mpirun_with(1, &["selftest"], &env_with(sim, &[("RINGBENCH_SIM_DELAY", "1")]), None);
    println!("{}", run.all());
    assert_eq!(run.status, Some(0), "{}", run.all());
    let out = &run.stdout;
    assert!(out.contains("ringbench selftest on ringbench simulated GPU"), "{out}");
    for verdict in [
        "attention kernel Auto",
        "attention kernel Flash64",
        "attention kernel Plain",
        "attention kernel Wgmma",
        "NCCL 2.28.0",
        "MPI host staging",
    ] {
        assert!(out.lines().any(|l| l.contains(verdict) && l.ends_with(": PASS")), "{verdict}: PASS in\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
    // Each kernel as the driver loaded it: the wgmma kernels at their exact register budget.
    for kernel in ["flash_wgmma_d128_bf16: 168 registers, 0 B local memory", "flash_wgmma_d64_bf16: 168 registers, 0 B local memory"] {
        assert!(out.contains(kernel), "{kernel} in\n{out}");
    }
}

#[test]
fn a_kernel_short_of_its_register_budget_or_a_failing_nccl_group_ends_with_a_named_error() {
    let Some(sim) = sim_env() else { return };
    // The wgmma kernel loaded with fewer registers than setmaxnreg's budget would hang on a GPU:
    // it is refused before any work, named, with the arithmetic.
    let env = env_with(sim, &[("RINGBENCH_SIM_REGISTERS", "flash_wgmma_d128_bf16=160")]);
    let args = ["bench", "attention", "--backend", "cuda", "--kernel", "wgmma", "--queries", "100", "--keys", "100", "--heads", "2"];
    let run = common::mpirun_with(1, &args, &env, None);
    assert_ne!(run.status, Some(0), "{}", run.all());
    assert!(
        run.stderr.contains("flash_wgmma_d128_bf16 was loaded with 160 registers per thread, fewer than the 168")
            && run.stderr.contains("setmaxnreg.inc would wait forever"),
        "{}",
        run.all()
    );
    // A failing ncclGroupEnd is an error naming the rank and the call, not a panic in a Drop.
    let env = env_with(sim, &[("RINGBENCH_SIM_NCCL_FAIL_GROUP_END", "2")]);
    let args =
        ["verify", "--backend", "cuda", "--strategy", "ring", "--comm", "nccl", "--preset", "tiny", "--seq-len", "67", "--batch", "1"];
    let run = common::mpirun_with(2, &args, &env, None);
    let out = run.all();
    assert!(run.status.is_some_and(|s| s != 0), "exit {:?}\n{out}", run.status);
    // Whichever rank reports first ends the job (MPI_Abort), so either may be the one named.
    assert!(
        out.contains("NCCL exchange on rank 0 of 2 (send to 1, receive from 1): ncclGroupEnd: ncclSystemError")
            || out.contains("NCCL exchange on rank 1 of 2 (send to 0, receive from 0): ncclGroupEnd: ncclSystemError"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
    assert!(run.elapsed.as_secs() < 30, "took {:?}", run.elapsed);
}

/// Models whose head dims take the plain kernel (16), and the flash kernel at 64 and 128.
const PLAIN: &[&str] = &["--preset", "tiny", "--seq-len", "67", "--batch", "1"];
const DECODE_GQA: &[&str] =
    &["--d-model", "1024", "--heads", "8", "--kv-heads", "1", "--mlp", "64", "--layers", "1", "--seq-len", "130", "--batch", "3"];
const FLASH64: &[&str] = &["--d-model", "128", "--heads", "2", "--mlp", "256", "--layers", "2", "--seq-len", "61", "--batch", "1"];
/// FLASH64 with its layer count left to the case.
const FLASH64_ANY_LAYERS: &[&str] = &["--d-model", "128", "--heads", "2", "--mlp", "256", "--seq-len", "61", "--batch", "1"];
const FLASH128: &[&str] = &[
    "--d-model",
    "256",
    "--heads",
    "2",
    "--kv-heads",
    "1",
    "--mlp",
    "256",
    "--mlp-act",
    "swiglu",
    "--layers",
    "1",
    "--seq-len",
    "45",
    "--batch",
    "1",
];

#[test]
fn every_strategy_verifies_on_the_simulated_gpu_over_nccl_and_mpi_with_random_delays() {
    let Some(sim) = sim_env() else { return };
    let env = env_with(sim, &[("RINGBENCH_SIM_DELAY", "1")]);
    let cases: &[(usize, &[&str], &[&str])] = &[
        (1, &["--strategy", "reference"], PLAIN),
        // A training step (kernels/flash_backward.cu at head dims 64 and 128, attention_backward.cu
        // at 16, backward.cu, cuBLAS's transposed GEMMs, NCCL's FP32 all-reduce) against the
        // reference and the FP64 oracle: one rank, then the ring's travelling dK/dV (one layer),
        // tp-pp's pipeline and Ulysses' head exchange (its forward checked through its
        // gradients). The forward of the others is verified by the decode cases below (which
        // check the prefill too).
        (1, &["--strategy", "tp-pp", "--comm", "nccl", "--train"], FLASH128),
        (4, &["--strategy", "ring", "--comm", "nccl", "--train", "--layers", "1"], FLASH64_ANY_LAYERS),
        (4, &["--strategy", "ring", "--layout", "contiguous", "--comm", "nccl"], FLASH128),
        (4, &["--strategy", "ring", "--comm", "mpi"], PLAIN),
        (4, &["--strategy", "tp-pp", "--tp", "2", "--pp", "2", "--comm", "nccl", "--train"], PLAIN),
        (4, &["--strategy", "tp-pp", "--tp", "2", "--pp", "2", "--comm", "mpi"], FLASH64),
        (4, &["--strategy", "allgather", "--layout", "striped", "--comm", "nccl"], FLASH128),
        (4, &["--strategy", "ulysses", "--comm", "nccl", "--train"], PLAIN),
        (4, &["--strategy", "usp", "--ulysses", "2", "--ring", "2", "--comm", "nccl"], FLASH64),
        (4, &["--strategy", "tp-cp", "--tp", "2", "--cp", "2", "--layout", "striped", "--comm", "nccl"], FLASH128),
        // The outer ring on a communication stream of its own, overlapping the inner ring's.
        (4, &["--strategy", "double-ring", "--window", "2", "--comm", "nccl"], FLASH64),
        (4, &["--strategy", "double-ring", "--window", "2", "--layout", "contiguous", "--comm", "mpi"], PLAIN),
        // Decode through the split kernel (kernels/decode_attention.cu) and the merge of partial
        // results: ring's pass-Q, allgather's gathered queries, tp-pp's heads down a pipeline, and
        // grouped K/V 8:1 at head dim 128 with three sequences over the four query owners.
        (4, &["--strategy", "ring", "--comm", "nccl", "--decode-tokens", "3"], FLASH64),
        (4, &["--strategy", "allgather", "--comm", "nccl", "--decode-tokens", "2"], PLAIN),
        (4, &["--strategy", "tp-pp", "--tp", "2", "--pp", "2", "--comm", "nccl", "--decode-tokens", "3"], PLAIN),
        (4, &["--strategy", "ring", "--comm", "nccl", "--decode-tokens", "2"], DECODE_GQA),
    ];
    for (np, strategy, model) in cases {
        let mut args = vec!["verify", "--backend", "cuda"];
        args.extend_from_slice(strategy);
        args.extend_from_slice(model);
        let run = common::mpirun_with(*np, &args, &env, None);
        println!("{np} rank(s) {args:?} in {:.1} s:\n{}", run.elapsed.as_secs_f64(), run.stdout);
        assert_eq!(run.status, Some(0), "{np} rank(s) {args:?}:\n{}", run.all());
        assert!(run.stdout.contains("cuda backend") && run.stdout.trim_end().ends_with("PASS"), "{}", run.all());
    }
}

#[test]
fn a_run_on_the_simulated_gpu_and_an_emulated_rank_reduce_as_simulated() {
    let Some(sim) = sim_env() else { return };
    let root = common::temp_root("sim-run");
    let out = root.to_str().unwrap();
    let env = env_with(sim, &[]);
    let small = ["--seq-len", "67", "--batch", "1", "--iters", "2", "--warmup", "1", "--decode-tokens", "2", "--out", out];
    let mut args = vec!["run", "--backend", "cuda", "--strategy", "all", "--run-id", "four"];
    args.extend_from_slice(&small);
    let run = common::mpirun_with(4, &args, &env, None);
    assert_eq!(run.status, Some(0), "{}", run.all());
    assert!(run.stdout.contains("SIMULATED: ringbench simulated GPU"), "{}", run.stdout);
    let mut args = vec!["run", "--backend", "cuda", "--strategy", "ring", "--emulate-world", "4", "--as-rank", "1", "--run-id", "emulated"];
    args.extend_from_slice(&small);
    let emulated = common::mpirun_with(1, &args, &env, None);
    assert_eq!(emulated.status, Some(0), "{}", emulated.all());
    // Offline, as any run's results reduce: every row says simulated, none is held to a GPU's bound.
    for id in ["four", "emulated"] {
        let dir = root.join(id);
        let reduce = Command::new(env!("CARGO_BIN_EXE_ringbench")).arg("reduce").arg(&dir).output().unwrap();
        assert!(reduce.status.success(), "{}", String::from_utf8_lossy(&reduce.stderr));
        for table in ["summary.csv", "ranks.csv"] {
            let mut rows = csv::Reader::from_path(dir.join(table)).unwrap();
            let headers = rows.headers().unwrap().clone();
            let col = |name: &str| headers.iter().position(|h| h == name).unwrap_or_else(|| panic!("{table} has {name}"));
            let (device, timing, status) = (col("device"), col("timing"), col("status"));
            let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
            assert_eq!(
                rows.len(),
                // tp-pp, ring, allgather, ulysses, usp, tp-cp and double-ring; 4 ranks each in ranks.csv.
                if table == "ranks.csv" && id == "four" {
                    28
                } else if id == "four" {
                    7
                } else {
                    1
                },
                "{id}/{table}"
            );
            for r in &rows {
                assert!(r[device].starts_with("ringbench simulated GPU"), "{id}/{table}: {:?}", &r[device]);
                assert_eq!(&r[timing], "simulated", "{id}/{table}");
                assert_eq!(&r[status], "complete", "{id}/{table}");
            }
        }
    }
    // A calibration takes no rates from the stand-in.
    let plan = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(["plan", "--strategy", "ring", "--ring", "4", "--calibrate", root.join("emulated").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&plan.stderr).contains("its times are the stand-in's, no GPU's"),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_rank_that_fails_or_stalls_mid_ring_over_nccl_ends_the_job_naming_it() {
    let Some(sim) = sim_env() else { return };
    let root = common::temp_root("sim-faults");
    let host = ringbench::console::hostname();
    let args = ["run", "--backend", "cuda", "--strategy", "ring", "--seq-len", "67", "--batch", "1", "--iters", "4", "--warmup", "1"];
    let mut args = args.to_vec();
    args.extend(["--comm-timeout", "3", "--quiet", "--out", root.to_str().unwrap()]);
    // A panic: the rank names itself and MPI ends the others, which wait inside NCCL on the device.
    let run = common::mpirun_with(4, &args, &env_with(sim, &[("RINGBENCH_FAULT", "rank:2,iter:1,kind:panic")]), None);
    let out = run.all();
    assert!(run.status.is_some_and(|s| s != 0), "exit {:?}\n{out}", run.status);
    assert!(out.contains(&format!("rank 2 on host {host}: panic")) && out.contains("injected fault"), "{out}");
    assert!(run.elapsed.as_secs() < 30, "took {:?}", run.elapsed);
    // A stall: its peers' device synchronize waits on NCCL receives that never complete; the
    // watchdog ends the job and the stalled rank names itself.
    let run = common::mpirun_with(4, &args, &env_with(sim, &[("RINGBENCH_FAULT", "rank:1,iter:2,kind:stall")]), None);
    let out = run.all();
    assert!(run.status.is_some_and(|s| s != 0), "exit {:?}\n{out}", run.status);
    assert!(out.contains("watchdog: device synchronize (end of iteration)") && out.contains("--comm-timeout 3 s"), "{out}");
    assert!(out.contains(&format!("rank 1 on host {host}: watchdog: this rank has stalled")), "{out}");
    assert!(run.elapsed.as_secs() < 30, "took {:?}", run.elapsed);
    let _ = std::fs::remove_dir_all(&root);
}
