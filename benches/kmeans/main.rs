//! k-means benchmark driver (run by `benches/kmeans/run.sh`): clusters a raw
//! little-endian f32 matrix with `fewlabels::kmeans` and prints one JSON line
//! with the times and, when true labels are given, the NMI. `--project`
//! instead times iterations on random data and scales them to 1.28M x 2048.
use std::time::Instant;

use fewlabels::kmeans::{self, Backend, Config, Init};
use fewlabels::metrics::clustering;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn init_of(s: &str) -> Init {
    match s {
        "kmeans++" => Init::KmeansPlusPlus,
        "kmeans-parallel" => Init::KmeansParallel,
        "random" => Init::Random,
        _ => Init::Auto,
    }
}

fn backend_of(s: &str) -> Backend {
    match s {
        "linfa" => Backend::Linfa,
        "torch" => Backend::Torch,
        _ => Backend::Auto,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; without our flags there is nothing to do.
    if arg(&args, "--data").is_none() && !args.iter().any(|a| a == "--project") {
        eprintln!("usage: kmeans --data X.f32 --n N --d D --k K [--labels Y.i64] [--iters 25] [--init I] [--backend B] [--seed S] | --project [--n 64000]");
        return;
    }
    let threads = num(&args, "--threads", 0);
    fewlabels::device::set_threads(threads);
    let k = num(&args, "--k", 1000);
    let iters = num(&args, "--iters", 25);
    let seed = num(&args, "--seed", 0) as u64;
    let mut cfg = Config::new(k, seed);
    cfg.max_iter = iters;
    cfg.tol = arg(&args, "--tol").map_or(0.0, |v| v.parse().expect("--tol: a number"));
    cfg.init = init_of(&arg(&args, "--init").unwrap_or_default());
    cfg.backend = backend_of(&arg(&args, "--backend").unwrap_or_else(|| "torch".into()));
    if arg(&args, "--device").as_deref() == Some("cuda") {
        cfg.device = tch::Device::Cuda(0);
    }

    if args.iter().any(|a| a == "--project") {
        // Random data of the target width; per-iteration time scales with points.
        let (n, d) = (num(&args, "--n", 64_000), num(&args, "--d", 2048));
        let (target_n, target_d) = (1_281_167f64, 2048f64);
        let x: Vec<f32> = {
            let t = tch::Tensor::randn([n as i64, d as i64], (tch::Kind::Float, tch::Device::Cpu));
            Vec::<f32>::try_from(&t.view([-1])).expect("random data")
        };
        cfg.max_iter = num(&args, "--iters", 3);
        let t = Instant::now();
        let c = kmeans::fit(&x, n, d, &cfg).expect("k-means");
        let total = t.elapsed().as_secs_f64();
        let per_iter = c.iterate_seconds / c.iterations.max(1) as f64;
        let scale = target_n / n as f64 * target_d / d as f64;
        println!(
            "{}",
            serde_json::json!({
                "what": "projection", "n": n, "d": d, "k": k, "threads": threads,
                "init": format!("{:?}", c.init), "iterations": c.iterations,
                "seconds": total, "init_seconds": c.init_seconds, "seconds_per_iteration": per_iter,
                "projected_n": target_n, "projected_d": target_d,
                "projected_seconds_per_iteration": per_iter * scale,
                "projected_init_seconds": c.init_seconds * scale,
                "projected_seconds_25_iterations": c.init_seconds * scale + 25.0 * per_iter * scale,
            })
        );
        return;
    }

    let path = arg(&args, "--data").expect("--data");
    let (n, d) = (num(&args, "--n", 0), num(&args, "--d", 0));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(bytes.len(), n * d * 4, "{path}: not {n} x {d} f32");
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    drop(bytes);
    let t = Instant::now();
    let c = kmeans::fit(&x, n, d, &cfg).expect("k-means");
    let seconds = t.elapsed().as_secs_f64();
    let quality = arg(&args, "--labels").map(|p| {
        let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
        let truth: Vec<usize> = b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect();
        let n_true = truth.iter().max().map_or(0, |m| m + 1);
        let pred: Vec<usize> = c.labels.iter().map(|&l| l as usize).collect();
        let (q, _) = clustering::cluster_quality(&truth, &pred, n_true, k).expect("quality");
        q
    });
    println!(
        "{}",
        serde_json::json!({
            "what": "fewlabels", "n": n, "d": d, "k": k, "threads": threads,
            "backend": format!("{:?}", c.backend), "init": format!("{:?}", c.init),
            "iterations": c.iterations, "seconds": seconds,
            "init_seconds": c.init_seconds, "iterate_seconds": c.iterate_seconds,
            "seconds_per_iteration": c.iterate_seconds / c.iterations.max(1) as f64,
            "inertia": c.inertia, "nmi": quality.as_ref().map(|q| q.nmi),
            "accuracy": quality.as_ref().map(|q| q.accuracy),
        })
    );
}
