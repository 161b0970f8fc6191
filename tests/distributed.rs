//! Data-parallel training across processes on this machine's CPU (Gloo),
//! launched the way torchrun launches (`RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT` set by the test, or torchrun itself). The
//! engine: collectives between two processes of this test binary (it
//! re-runs itself as the workers), a rendezvous that names the rank that
//! did not come, a rank that fails or is killed stops the other; then
//! `train-gan` under the real torchrun and `pretrain` on two ranks against
//! one process accumulating the same batches, one set of outputs, and a
//! 2-rank `train-gan` whose rank 1 is killed: rank 0 stops with an error,
//! and the same command resumes to the single process's weights.
mod common;
use common::s;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fewlabels::dist::{Dist, Launch};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Set in the workers this binary starts: which worker body to run.
const ROLE: &str = "FEWLABELS_TEST_DIST_ROLE";

/// A TCP port nobody listens on now (the kernel's pick).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// torchrun's variables for `rank` of `world` on this machine.
fn rank_env(cmd: &mut Command, rank: usize, world: usize, port: u16) {
    cmd.env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("TORCHELASTIC_RUN_ID")
        .env_remove("SLURM_PROCID");
}

/// This test binary, re-run as worker `role` for the single test `test`.
fn worker(test: &str, role: &str, rank: usize, world: usize, port: u16) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(ROLE, role);
    rank_env(&mut cmd, rank, world, port);
    cmd
}

/// Waits for `child` at most `limit`; kills it and fails the test past that.
fn wait_for(mut child: Child, limit: Duration, what: &str) -> Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!(
                "{what} still running after {limit:?}: it hangs\n{}",
                common::text(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn piped(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

fn joined() -> Dist {
    let launch = Launch::from_env().expect("launch variables");
    assert!(launch.is_some(), "the test set RANK and WORLD_SIZE");
    Dist::init(launch, Device::Cpu).expect("rendezvous")
}

/// The worker of `collectives_between_two_processes`.
fn collectives_worker() {
    let d = joined();
    let (rank, world) = (d.rank(), d.world());
    assert_eq!(world, 2);
    let r = rank as f64;

    // Gradients: two variables (one past a bucket, so there are several),
    // rank-dependent gradients, averaged.
    let vs = VarStore::new(Device::Cpu);
    let big = (fewlabels::dist::BUCKET_BYTES / 4 + 1000) as i64;
    let a = vs.root().var("a", &[big], tch::nn::Init::Const(0.0));
    let b = vs.root().var("b", &[3, 2], tch::nn::Init::Const(0.0));
    let unused = vs.root().var("unused", &[4], tch::nn::Init::Const(0.0));
    let loss = (&a * (r + 1.0)).sum(Kind::Float) + (&b * (10.0 * (r + 1.0))).sum(Kind::Float);
    loss.backward();
    d.average_gradients(&vs).expect("average");
    // Mean of (1, 2) and of (10, 20).
    assert_eq!(a.grad().min().double_value(&[]), 1.5);
    assert_eq!(a.grad().max().double_value(&[]), 1.5);
    assert!(
        b.grad().eq(15.0).all().int64_value(&[]) == 1,
        "{}",
        b.grad()
    );
    assert!(
        !unused.grad().defined(),
        "a variable no loss reached keeps no gradient"
    );

    // Broadcast of mixed kinds from rank 0.
    let f = Tensor::full([5], 1.0 + r, (Kind::Float, Device::Cpu));
    let g = Tensor::full([2, 2], 7.0 * (r + 1.0), (Kind::Double, Device::Cpu));
    let i = Tensor::full([3], 100 + rank as i64, (Kind::Int64, Device::Cpu));
    d.broadcast_from_rank0(&[f.shallow_clone(), g.shallow_clone(), i.shallow_clone()])
        .expect("broadcast");
    assert_eq!(f.sum(Kind::Double).double_value(&[]), 5.0);
    assert_eq!(g.sum(Kind::Double).double_value(&[]), 28.0);
    assert_eq!(i.sum(Kind::Int64).int64_value(&[]), 300);

    let mut v = [r, 1.0, 0.25];
    d.sum_f64(&mut v).expect("sum");
    assert_eq!(v, [1.0, 2.0, 0.5]);
    assert_eq!(d.broadcast_u64(40 + rank as u64).expect("u64"), 40);
    d.barrier("the last barrier").expect("barrier");
    println!("worker {rank}: all collectives agree");
}

#[test]
fn collectives_between_two_processes() {
    if role().as_deref() == Some("collectives") {
        return collectives_worker();
    }
    let port = free_port();
    let test = "collectives_between_two_processes";
    let children: Vec<Child> = (0..2)
        .map(|r| piped(worker(test, "collectives", r, 2, port)))
        .collect();
    for (r, c) in children.into_iter().enumerate() {
        let o = wait_for(c, Duration::from_secs(120), "a collectives worker");
        assert!(o.status.success(), "rank {r}:\n{}", common::text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout)
                .contains(&format!("worker {r}: all collectives agree")),
            "rank {r}:\n{}",
            common::text(&o)
        );
    }
}

/// The worker of the rendezvous and failure tests: joins, then (`fail`)
/// announces a failure, or (`loop`) all-reduces until the group breaks.
fn join_worker(then: &str) {
    let d = match Launch::from_env().and_then(|l| Dist::init(l, Device::Cpu)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!("joined as {}", d.who());
    match then {
        "fail" if d.rank() == 1 => {
            d.announce_failure(&fewlabels::Error::invalid(
                "step 3: the test made rank 1 fail",
            ));
            std::process::exit(1);
        }
        _ => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Err(e) = d.barrier("the test's barrier") {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            eprintln!("error: nobody stopped");
            std::process::exit(3);
        }
    }
}

#[test]
fn rendezvous_names_the_rank_that_did_not_arrive() {
    if let Some(r) = role() {
        return join_worker(&r);
    }
    let test = "rendezvous_names_the_rank_that_did_not_arrive";
    // Rank 0 of 3 alone with rank 2: rank 1 never comes.
    let port = free_port();
    let mut c0 = worker(test, "loop", 0, 3, port);
    c0.env("FEWLABELS_DIST_TIMEOUT", "3");
    let mut c2 = worker(test, "loop", 2, 3, port);
    c2.env("FEWLABELS_DIST_TIMEOUT", "3");
    let (c0, c2) = (piped(c0), piped(c2));
    for (r, c) in [(0, c0), (2, c2)] {
        let o = wait_for(
            c,
            Duration::from_secs(60),
            "a rank waiting for a missing one",
        );
        assert_eq!(o.status.code(), Some(1), "rank {r}:\n{}", common::text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("error: rank {r} of 3: rendezvous at 127.0.0.1:{port}: rank 1 of 3 did not arrive within 3 s")),
            "rank {r}:\n{}",
            common::text(&o)
        );
    }
    // A rank whose rank 0 never serves the store.
    let mut c1 = worker(test, "loop", 1, 2, free_port());
    c1.env("FEWLABELS_DIST_TIMEOUT", "2");
    let o = wait_for(piped(c1), Duration::from_secs(60), "a rank without rank 0");
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("error: rank 1 of 2: cannot reach the rendezvous store at 127.0.0.1:"),
        "{}",
        common::text(&o)
    );
}

#[test]
fn a_failing_or_killed_rank_stops_the_others() {
    if let Some(r) = role() {
        return join_worker(&r);
    }
    let test = "a_failing_or_killed_rank_stops_the_others";
    // Rank 1 fails with a message: rank 0 stops with it, at once.
    let port = free_port();
    let c0 = piped(worker(test, "loop", 0, 2, port));
    let c1 = piped(worker(test, "fail", 1, 2, port));
    let t0 = Instant::now();
    let o0 = wait_for(c0, Duration::from_secs(60), "rank 0 after rank 1 failed");
    let o1 = wait_for(c1, Duration::from_secs(60), "the failing rank");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(o1.status.code(), Some(1), "{}", common::text(&o1));
    assert_eq!(o0.status.code(), Some(1), "{}", common::text(&o0));
    assert!(
        String::from_utf8_lossy(&o0.stderr).contains(
            "error: rank 0 of 2: the test's barrier stopped: rank 1 failed: step 3: the test made rank 1 fail"
        ),
        "{}",
        common::text(&o0)
    );

    // Rank 0 is killed (SIGKILL, no word): rank 1 stops with an error.
    let port = free_port();
    let mut c0 = piped(worker(test, "loop", 0, 2, port));
    let c1 = piped(worker(test, "loop", 1, 2, port));
    // The test harness prints its own lines first.
    use std::io::BufRead;
    let joined = std::io::BufReader::new(c0.stdout.as_mut().expect("stdout"))
        .lines()
        .map_while(|l| l.ok())
        .any(|l| l.contains("joined as rank 0 of 2"));
    assert!(joined, "rank 0 never joined");
    std::thread::sleep(Duration::from_millis(300));
    c0.kill().expect("SIGKILL");
    let _ = c0.wait();
    survives_lost_peer(c1, "error: rank 1 of 2: the test's barrier failed:");
}

/// Waits for the rank whose peer was killed: it must stop (not hang) with
/// exit 1, `expect` and the lost connection in its error.
fn survives_lost_peer(child: Child, expect: &str) {
    let o = wait_for(
        child,
        Duration::from_secs(90),
        "a rank whose peer was killed",
    );
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(expect) && err.contains("another rank stopped or lost its connection"),
        "{}",
        common::text(&o)
    );
}

// ---- The training stages on two ranks (real Fashion-MNIST, tiny networks). ----

/// `train-gan` flags of the tiny s3gan-co both sides of a comparison share.
fn gan_args<'a>(data: &'a str, out: &'a str, batch: &'a str, accum: &'a str) -> Vec<&'a str> {
    vec![
        "train-gan",
        "--data",
        data,
        "--output",
        out,
        "--mode",
        "s3gan-co",
        "--steps",
        "4",
        "--sample-every",
        "2",
        "--checkpoint-every",
        "2",
        "--resolution",
        "32",
        "--ch",
        "4",
        "--batch-size",
        batch,
        "--accumulation",
        accum,
        "--rotated-batch-fraction",
        "2",
        "--log-every",
        "1",
        "--standing-batches",
        "2",
        "--grid-rows",
        "2",
        "--grid-cols",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
}

/// The reference of a 2-rank run of global batch B: one process with
/// batch B/2 accumulating 2 batches (the same images, latents and per-batch
/// batch norm; see src/gan/train.rs).
const GAN_TWO: (&str, &str) = ("16", "1");
const GAN_ONE: (&str, &str) = ("8", "2");

/// Tolerance on weights and logged losses: float sums in another order
/// (an average of two ranks' gradients against a sum of halves). Measured
/// here: 0, bit-identical.
const TOL: f64 = 1e-5;

/// Every floating-point tensor of two safetensors files, except batch
/// norm's running statistics (each rank keeps its own; rank 0's are saved).
fn assert_close_weights(a: &Path, b: &Path) {
    let read = |p: &Path| -> BTreeMap<String, Tensor> {
        Tensor::read_safetensors(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .into_iter()
            .filter(|(k, t)| {
                t.is_floating_point() && !k.contains("running_") && !k.starts_with("__")
            })
            .collect()
    };
    let (ta, tb) = (read(a), read(b));
    assert!(ta.len() > 10, "{}: {} tensors", a.display(), ta.len());
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, x) in &ta {
        let d = (x.to_kind(Kind::Double) - tb[k].to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            d <= TOL,
            "{k}: differs by {d} between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The logged losses and accuracies (not the speeds) of two runs, step by step.
fn assert_close_metrics(a: &Path, b: &Path) {
    let read = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .expect("metrics.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let (ma, mb) = (read(a), read(b));
    assert!(!ma.is_empty());
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        let (x, y) = (x.as_object().unwrap(), y.as_object().unwrap());
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
        for (k, v) in x {
            if k.contains("speed") || k.contains("per_s") {
                continue;
            }
            let (v, w) = (v.as_f64(), y[k].as_f64());
            if let (Some(v), Some(w)) = (v, w) {
                assert!(
                    (v - w).abs() <= TOL * v.abs().max(1.0),
                    "{k}: {v} against {w} ({x:?})"
                );
            }
        }
    }
}

/// torchrun from the cached torch environment.
fn torchrun() -> Command {
    let python = PathBuf::from(common::setup_var("FEWLABELS_PYTHON"));
    let mut cmd = Command::new(python.with_file_name("torchrun"));
    cmd.env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env("FEWLABELS_DIST_TIMEOUT", "60");
    cmd
}

/// How far two checkpoints are apart: the largest difference of a tensor's
/// values relative to the tensor's scale (its largest magnitude, at least
/// 1), over every floating-point tensor and over the "core" ones. Left out
/// of the core: G's biases and batch norm's running statistics. A bias that
/// feeds a batch norm (every G convolution's does) has an exact gradient of
/// zero, so float noise decides the sign of its Adam step (+-lr each step),
/// and the running statistics follow those biases.
fn relative_differences(a: &Path, b: &Path) -> (f64, f64) {
    let read = |p: &Path| -> BTreeMap<String, Tensor> {
        Tensor::read_safetensors(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .into_iter()
            .filter(|(k, t)| t.is_floating_point() && !k.starts_with("__"))
            .collect()
    };
    let (ta, tb) = (read(a), read(b));
    assert!(ta.keys().any(|k| k.contains("running_mean")));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    let (mut all, mut core) = (0f64, 0f64);
    for (k, x) in &ta {
        let x = x.to_kind(Kind::Double);
        let scale = x.abs().max().double_value(&[]).max(1.0);
        let d = (&x - tb[k].to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
            / scale;
        all = all.max(d);
        let free = k.contains("running_") || (k.contains("bias") && !k.starts_with("d."));
        if !free {
            core = core.max(d);
        }
    }
    (all, core)
}

/// compare_gan's cross-replica batch norm: two ranks of 8 images each with
/// `--sync-bn` train as one process with batch 16 does (batch norm over
/// all 16 images, spectral norm moved once per forward), and without it
/// they do not.
#[test]
fn sync_bn_on_two_ranks_matches_one_process_over_the_whole_batch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, _) = common::train_shards(tmp.path(), "all", 64, 32, None);
    let args = |out: &Path, sync: bool| {
        let mut a: Vec<String> = gan_args(s(&data), s(out), "16", "1")
            .into_iter()
            .map(String::from)
            .collect();
        // No rotation: compare_gan rotates part of each replica's batch,
        // which one process over the whole batch cannot match.
        let mode = a.iter().position(|x| x == "--mode").unwrap() + 1;
        a[mode] = "biggan".into();
        if sync {
            a.push("--sync-bn".into());
        }
        a
    };
    let (one, synced, local) = (
        tmp.path().join("one"),
        tmp.path().join("synced"),
        tmp.path().join("local"),
    );
    let a = args(&one, true);
    let o = common::run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", common::text(&o));
    for (out, sync) in [(&synced, true), (&local, false)] {
        let a = args(out, sync);
        let (o0, o1) = two_ranks(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            "train-gan",
        );
        assert!(o0.status.success(), "rank 0: {}", common::text(&o0));
        assert!(o1.status.success(), "rank 1: {}", common::text(&o1));
    }
    // Every step's losses, logits and accuracies.
    assert_close_metrics(&one, &synced);
    let ckpt = "checkpoints/ckpt-00000004.safetensors";
    let (sync_all, sync_core) = relative_differences(&one.join(ckpt), &synced.join(ckpt));
    let (_, local_core) = relative_differences(&one.join(ckpt), &local.join(ckpt));
    eprintln!(
        "after 4 steps, largest relative difference to one process: sync-bn {sync_core:e} (core), {sync_all:e} (all); per-rank batch norm {local_core:e} (core)"
    );
    assert!(
        sync_core <= 1e-4,
        "sync-bn: core weights differ by {sync_core}"
    );
    assert!(
        sync_all <= 1e-2,
        "sync-bn: biases or statistics differ by {sync_all}"
    );
    assert!(
        local_core >= 0.05,
        "per-rank batch norm should differ: {local_core}"
    );
}

#[test]
fn train_gan_under_torchrun_matches_one_process_and_writes_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, _) = common::train_shards(tmp.path(), "subset", 64, 32, Some("0.2"));
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let o = common::run(&gan_args(s(&data), s(&one), GAN_ONE.0, GAN_ONE.1));
    assert!(o.status.success(), "{}", common::text(&o));

    let mut cmd = torchrun();
    cmd.args(["--no-python", "--standalone", "--nproc-per-node", "2"])
        .arg(env!("CARGO_BIN_EXE_fewlabels"))
        .arg("--json")
        .args(gan_args(s(&data), s(&two), GAN_TWO.0, GAN_TWO.1));
    let o = wait_for(piped(cmd), Duration::from_secs(300), "torchrun train-gan");
    assert!(o.status.success(), "{}", common::text(&o));

    assert_close_metrics(&one, &two);
    assert_close_weights(
        &one.join("checkpoints/ckpt-00000004.safetensors"),
        &two.join("checkpoints/ckpt-00000004.safetensors"),
    );
    // One set of outputs: one summary (rank 0's), one event file, one
    // manifest that knows the world size.
    let stdout = String::from_utf8_lossy(&o.stdout);
    let summaries: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(summaries.len(), 1, "{}", common::text(&o));
    assert_eq!(summaries[0]["counts"]["world_size"], 2);
    let events = std::fs::read_dir(two.join("tensorboard"))
        .expect("tensorboard")
        .count();
    assert_eq!(events, 1);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(two.join("_stage.json")).expect("manifest"))
            .expect("json");
    assert_eq!(m["counts"]["world_size"], 2);
    assert!(two.join("ema.safetensors").exists() && two.join("samples/step-00000004.png").exists());
}

/// `fewlabels ARGS` as `rank` of 2, with torchrun's variables set here.
fn rank_of_two(args: &[&str], rank: usize, port: u16) -> Command {
    let mut cmd = common::bin();
    cmd.args(args).env("FEWLABELS_DIST_TIMEOUT", "60");
    rank_env(&mut cmd, rank, 2, port);
    cmd
}

/// Both ranks of a job, to their ends (rank 0's output first).
fn two_ranks(args: &[&str], what: &str) -> (Output, Output) {
    let port = free_port();
    let c0 = piped(rank_of_two(args, 0, port));
    let c1 = piped(rank_of_two(args, 1, port));
    let o0 = wait_for(c0, Duration::from_secs(300), what);
    let o1 = wait_for(c1, Duration::from_secs(300), what);
    (o0, o1)
}

#[test]
fn pretrain_on_two_ranks_matches_one_process() {
    let tmp = tempfile::tempdir().expect("tmp");
    let images = common::prepared_fashion(200, 16, None);
    let labels = tmp.path().join("labels");
    common::ok_json(&[
        "sample-labels",
        "--images",
        s(&images),
        "--fraction",
        "0.3",
        "--holdout",
        "0.05",
        "--output",
        s(&labels),
    ]);
    let args = |out: &Path, batch: &'static str, labelled: &'static str, accum: &'static str| {
        [
            "pretrain",
            "--images",
            s(&images),
            "--labels",
            s(&labels),
            "--output",
            s(out),
            "--arch",
            "tiny",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--lr",
            "0.05",
            "--warmup-steps",
            "2",
            "--steps",
            "6",
            "--checkpoint-every",
            "3",
            "--eval-every",
            "3",
            "--log-every",
            "2",
            "--batch-size",
            batch,
            "--labelled-batch-size",
            labelled,
            "--accumulation",
            accum,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let a = args(&one, "8", "4", "2");
    let o = common::run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", common::text(&o));
    let a = args(&two, "16", "8", "1");
    let (o0, o1) = two_ranks(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        "pretrain",
    );
    assert!(o0.status.success(), "rank 0: {}", common::text(&o0));
    assert!(o1.status.success(), "rank 1: {}", common::text(&o1));
    assert_close_metrics(&one, &two);
    assert_close_weights(
        &one.join("model.safetensors"),
        &two.join("model.safetensors"),
    );

    // A batch the ranks cannot share is refused before anything runs.
    let a = args(&tmp.path().join("odd"), "15", "8", "1");
    let (o0, _) = two_ranks(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        "pretrain",
    );
    assert_eq!(o0.status.code(), Some(2), "{}", common::text(&o0));
    assert!(
        String::from_utf8_lossy(&o0.stderr)
            .contains("--batch-size 15: must be a multiple of the 2 ranks"),
        "{}",
        common::text(&o0)
    );
}

#[test]
fn a_killed_rank_stops_train_gan_and_the_two_rank_run_resumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, _) = common::train_shards(tmp.path(), "subset", 64, 32, Some("0.2"));
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let o = common::run(&gan_args(s(&data), s(&one), GAN_ONE.0, GAN_ONE.1));
    assert!(o.status.success(), "{}", common::text(&o));

    // Both ranks, slowed down; rank 1 is killed (SIGKILL) after the first checkpoint.
    let args = gan_args(s(&data), s(&two), GAN_TWO.0, GAN_TWO.1);
    let port = free_port();
    let mut c0 = rank_of_two(&args, 0, port);
    let mut c1 = rank_of_two(&args, 1, port);
    for c in [&mut c0, &mut c1] {
        c.env("FEWLABELS_TEST_STEP_DELAY_MS", "400");
    }
    let (c0, mut c1) = (piped(c0), piped(c1));
    let first = two.join("checkpoints/ckpt-00000002.safetensors");
    common::wait_for_file(&first, Duration::from_secs(200));
    c1.kill().expect("SIGKILL");
    let _ = c1.wait();
    survives_lost_peer(c0, "error: rank 0 of 2: ");
    assert!(
        !two.join("_stage.json").exists(),
        "the stopped run must not look finished"
    );

    // The same command on two ranks resumes and ends where one process does.
    let (o0, o1) = two_ranks(&args, "the resumed train-gan");
    assert!(o0.status.success(), "rank 0: {}", common::text(&o0));
    assert!(o1.status.success(), "rank 1: {}", common::text(&o1));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(two.join("_stage.json")).expect("manifest"))
            .expect("json");
    let from = m["counts"]["resumed_from_step"].as_u64().expect("count");
    assert!(from >= 2, "resumed from step {from}");
    assert_close_weights(
        &one.join("checkpoints/ckpt-00000004.safetensors"),
        &two.join("checkpoints/ckpt-00000004.safetensors"),
    );
    let steps: Vec<u64> = std::fs::read_to_string(two.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["step"]
                .as_u64()
                .expect("step")
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
}
