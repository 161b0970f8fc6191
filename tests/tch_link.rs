//! The libtorch link: a tiny network trains one step through tch, and the
//! binary carries libtorch_cuda.so (dropped by `--as-needed` otherwise, which
//! silently disables CUDA even on a GPU machine) and an rpath to the cache.
mod common;

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn tiny_network_forward_backward_step() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = nn::seq()
        .add(nn::linear(vs.root() / "l1", 4, 8, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "l2", 8, 1, Default::default()));
    let mut opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let x = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
    let y = x.sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
    let before = vs
        .trainable_variables()
        .iter()
        .map(|v| v.copy())
        .collect::<Vec<_>>();
    let loss0 = net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
    opt.backward_step(&loss0);
    let changed = vs
        .trainable_variables()
        .iter()
        .zip(&before)
        .any(|(a, b)| (a - b).abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(changed, "the optimizer step changed no weight");
    for _ in 0..50 {
        let loss = net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        opt.backward_step(&loss);
    }
    let loss1 = net
        .forward(&x)
        .mse_loss(&y, tch::Reduction::Mean)
        .double_value(&[]);
    assert!(
        loss1 < loss0.double_value(&[]) * 0.5,
        "loss did not fall: {} -> {loss1}",
        loss0.double_value(&[])
    );
}

#[test]
fn binary_links_libtorch_cuda_and_has_rpath() {
    let exe = env!("CARGO_BIN_EXE_fewlabels");
    let ldd = std::process::Command::new("ldd")
        .arg(exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run ldd");
    let out = String::from_utf8_lossy(&ldd.stdout);
    assert!(
        out.contains("libtorch_cuda.so"),
        "ldd does not list libtorch_cuda.so:\n{out}"
    );
    assert!(
        !out.contains("not found"),
        "unresolved libraries without LD_LIBRARY_PATH:\n{out}"
    );
}

#[test]
fn doctor_reports_libtorch() {
    let o = common::bin()
        .args(["doctor", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["libtorch_version"]
            .as_str()
            .unwrap()
            .split('+')
            .next()
            .unwrap(),
        "2.11.0",
        "{v}"
    );
    assert!(v["torch_threads"].as_i64().unwrap() >= 1);
    assert!(v["cuda_available"].is_boolean());
}
