//! `ringbench run`: the timed protocol end to end, and the arithmetic of what it prints.

mod common;
use common::mpirun;

fn number_after(out: &str, label: &str) -> (f64, String) {
    let line = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} in:\n{out}"));
    let mut words = line[label.len()..].split_whitespace();
    let v: f64 = words.next().unwrap().parse().unwrap();
    (v, words.next().unwrap_or("").to_string())
}

fn seconds(v: f64, unit: &str) -> f64 {
    v * match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "ns" => 1e-9,
        u => panic!("unit {u}"),
    }
}

#[test]
fn tokens_per_second_and_time_per_token_follow_from_the_iteration_time() {
    for (np, flags) in [(4, "--strategy ring --seq-len 500 --batch 2"), (4, "--strategy tp-pp --pp 2 --seq-len 500 --batch 2")] {
        let mut args = vec!["run", "--iters", "3", "--warmup", "1"];
        args.extend(flags.split_whitespace());
        let run = mpirun(np, &args);
        let out = run.all();
        assert_eq!(run.status, Some(0), "{out}");
        let (mean, unit) = number_after(&out, "iteration time: mean");
        let iter = seconds(mean, &unit);
        let (tps, _) = number_after(&out, "tokens/s:");
        let (tpot, unit) = number_after(&out, "time per token:");
        let tokens = 2.0 * 500.0;
        assert!(iter > 0.0);
        // The console prints 4 significant digits.
        assert!((tps - tokens / iter).abs() <= 1e-3 * tps, "{out}");
        assert!((seconds(tpot, &unit) - iter / tokens).abs() <= 1e-3 * iter / tokens, "{out}");
        assert!(out.contains("n 3)"), "{out}");
    }
}
