//! Who started this process, read from the environment the launchers set:
//! torchrun (and a Kubernetes PyTorchJob, or anyone setting the same
//! variables by hand) sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR` and `MASTER_PORT`, as `torch.distributed`'s `env://`
//! reads them; Slurm's `srun` sets `SLURM_PROCID`, `SLURM_NTASKS` and
//! `SLURM_LOCALID`, and the job script exports `MASTER_ADDR` and
//! `MASTER_PORT`. torchrun's variables win when both are there (torchrun
//! started inside an srun step).
use std::time::Duration;

use crate::error::{Error, Result};

/// Seconds a rank waits for the others (rendezvous, a collective, rank 0's
/// decisions) before it stops with an error: torch.distributed's default.
pub const DEFAULT_TIMEOUT_S: u64 = 1800;
pub const TIMEOUT_VAR: &str = "FEWLABELS_DIST_TIMEOUT";

/// Which launcher's variables were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun (TORCHELASTIC_RUN_ID is set).
    Torchrun,
    /// `RANK` / `WORLD_SIZE` without torchrun (a PyTorchJob pod, a hand-made launch).
    Env,
    /// Slurm's srun.
    Slurm,
}

impl Launcher {
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Env => "RANK/WORLD_SIZE",
            Launcher::Slurm => "srun",
        }
    }
}

/// This process's place in a launched job.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: usize,
    pub world: usize,
    /// Its index on its machine: the GPU it takes.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already serves the TCPStore at MASTER_ADDR:MASTER_PORT;
    /// otherwise rank 0 serves it.
    pub agent_store: bool,
    /// Keys of this job in the store (torchrun's agent store outlives one attempt).
    pub key_prefix: String,
    pub timeout: Duration,
}

impl Launch {
    /// The launch this process's environment describes; `None` when no
    /// launcher started it (a plain single-process run).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The same from any variable lookup (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let timeout = match get(TIMEOUT_VAR) {
            None => Duration::from_secs(DEFAULT_TIMEOUT_S),
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(Error::usage(format!(
                        "{TIMEOUT_VAR} = {v}: must be a positive number of seconds"
                    )))
                }
            },
        };
        let (launcher, rank_var, world_var, local_var) =
            if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
                let l = if get("TORCHELASTIC_RUN_ID").is_some() {
                    Launcher::Torchrun
                } else {
                    Launcher::Env
                };
                (l, "RANK", "WORLD_SIZE", "LOCAL_RANK")
            } else if get("SLURM_PROCID").is_some() && get("SLURM_NTASKS").is_some() {
                (
                    Launcher::Slurm,
                    "SLURM_PROCID",
                    "SLURM_NTASKS",
                    "SLURM_LOCALID",
                )
            } else {
                return Ok(None);
            };
        let number = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::usage(format!(
                        "{k} = {v}: must be a whole number (set by {})",
                        launcher.name()
                    ))
                }),
            }
        };
        let need = |k: &str| -> Result<usize> {
            number(k)?.ok_or_else(|| {
                Error::usage(format!(
                    "{k} is not set: {} launches need RANK and WORLD_SIZE (or Slurm's SLURM_PROCID and SLURM_NTASKS) together",
                    launcher.name()
                ))
            })
        };
        let rank = need(rank_var)?;
        let world = need(world_var)?;
        if world == 0 {
            return Err(Error::usage(format!(
                "{world_var} = 0: need at least one rank"
            )));
        }
        if rank >= world {
            return Err(Error::usage(format!(
                "{rank_var} = {rank}: must be below {world_var} = {world}"
            )));
        }
        let local_rank = match number(local_var)? {
            Some(l) => l,
            // One process per machine (a PyTorchJob pod): the first GPU.
            None => match number("LOCAL_WORLD_SIZE")? {
                Some(n) if n > 0 => rank % n,
                _ => 0,
            },
        };
        let hint = match launcher {
            Launcher::Slurm => {
                " (in the job script: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) MASTER_PORT=29500)"
            }
            _ => " (the address and port of rank 0's machine)",
        };
        let master_addr = get("MASTER_ADDR").ok_or_else(|| {
            Error::usage(format!(
                "MASTER_ADDR is not set, but {} started this process as rank {rank} of {world}{hint}",
                launcher.name()
            ))
        })?;
        let port_text = get("MASTER_PORT").ok_or_else(|| {
            Error::usage(format!(
                "MASTER_PORT is not set, but {} started this process as rank {rank} of {world}{hint}",
                launcher.name()
            ))
        })?;
        let master_port = match port_text.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(Error::usage(format!(
                    "MASTER_PORT = {port_text}: must be a TCP port (1-65535)"
                )))
            }
        };
        let agent_store = launcher == Launcher::Torchrun
            && get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True");
        let key_prefix = match launcher {
            Launcher::Torchrun => format!(
                "fewlabels/{}/{}/",
                get("TORCHELASTIC_RUN_ID").unwrap_or_default(),
                get("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into())
            ),
            Launcher::Slurm => format!(
                "fewlabels/slurm-{}.{}/",
                get("SLURM_JOB_ID").unwrap_or_default(),
                get("SLURM_STEP_ID").unwrap_or_default()
            ),
            Launcher::Env => "fewlabels/env/".to_string(),
        };
        Ok(Some(Launch {
            launcher,
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
            agent_store,
            key_prefix,
            timeout,
        }))
    }

    /// Whether every rank runs on this machine (Gloo then binds the loopback).
    pub fn is_local(&self) -> bool {
        matches!(
            self.master_addr.as_str(),
            "127.0.0.1" | "localhost" | "::1" | "[::1]"
        )
    }

    /// "rank R of W", for messages.
    pub fn who(&self) -> String {
        format!("rank {} of {}", self.rank, self.world)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn no_launcher_is_a_single_process() {
        assert_eq!(launch(&[("HOME", "/root")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_RUN_ID", "job7"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            // torchrun's variables win over an enclosing srun step's.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Torchrun);
        assert_eq!((l.rank, l.world, l.local_rank), (3, 8, 1));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("10.0.0.1", 29400));
        assert!(l.agent_store);
        assert_eq!(l.key_prefix, "fewlabels/job7/2/");
        assert!(!l.is_local());
        assert_eq!(l.timeout, Duration::from_secs(DEFAULT_TIMEOUT_S));
    }

    #[test]
    fn slurm_variables_and_pod_defaults() {
        let l = launch(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_ID", "991"),
            ("MASTER_ADDR", "localhost"),
            ("MASTER_PORT", "29500"),
            (TIMEOUT_VAR, "2.5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Slurm);
        assert_eq!((l.rank, l.world, l.local_rank), (5, 16, 1));
        assert!(!l.agent_store && l.is_local());
        assert_eq!(l.timeout, Duration::from_millis(2500));
        // A PyTorchJob pod: RANK and WORLD_SIZE, no LOCAL_RANK.
        let l = launch(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
            ("MASTER_ADDR", "job-master-0"),
            ("MASTER_PORT", "23456"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.launcher, l.local_rank), (Launcher::Env, 0));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_constraint() {
        let base = [("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        let err = |extra: &[(&str, &str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            launch(&v).unwrap_err().to_string()
        };
        assert_eq!(
            err(&[("RANK", "2"), ("WORLD_SIZE", "2")]),
            "RANK = 2: must be below WORLD_SIZE = 2"
        );
        assert_eq!(
            err(&[("RANK", "0"), ("WORLD_SIZE", "0")]),
            "WORLD_SIZE = 0: need at least one rank"
        );
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")])
            .starts_with("RANK = x: must be a whole number"));
        assert!(err(&[("RANK", "0")]).starts_with("WORLD_SIZE is not set"));
        assert!(launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")])
            .unwrap_err()
            .to_string()
            .contains("export MASTER_ADDR=$(scontrol show hostnames"));
        assert!(launch(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000")
        ])
        .unwrap_err()
        .to_string()
        .starts_with("MASTER_PORT = 70000: must be a TCP port"));
        assert!(launch(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
            (TIMEOUT_VAR, "0")
        ])
        .unwrap_err()
        .to_string()
        .starts_with("FEWLABELS_DIST_TIMEOUT = 0: must be a positive number"));
    }
}
