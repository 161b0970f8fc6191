//! Data-parallel training across processes on this machine's CPU (Gloo),
//! launched the way torchrun launches (`RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT` set by the test, or torchrun itself). The
//! engine: collectives between two processes of this test binary (it
//! re-runs itself as the workers), a rendezvous that names the rank that
//! did not come, a rank that fails or is killed stops the other.
mod common;

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
    let o1 = wait_for(
        c1,
        Duration::from_secs(60),
        "rank 1 after rank 0 was killed",
    );
    assert_eq!(o1.status.code(), Some(1), "{}", common::text(&o1));
    let err = String::from_utf8_lossy(&o1.stderr);
    assert!(
        err.contains("error: rank 1 of 2: the test's barrier failed:")
            && err.contains("another rank stopped or lost its connection"),
        "{}",
        common::text(&o1)
    );
}
