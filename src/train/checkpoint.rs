//! Atomic safetensors checkpoints of named tensors: model variables,
//! optimiser state, and a JSON metadata record (step, RNG state, anything the
//! trainer needs to resume) stored inside the same file as a `u8` tensor, so
//! one rename makes a checkpoint complete and a killed run never leaves a
//! half-written one. Files are `ckpt-00000100.safetensors`; the last `keep`
//! are kept.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::temp_path;

/// Name of the tensor that carries the JSON metadata.
pub const META_TENSOR: &str = "__meta__";
const PREFIX: &str = "ckpt-";
const SUFFIX: &str = ".safetensors";

/// A checkpoint read back from disk (tensors on the CPU).
pub struct Checkpoint {
    pub path: PathBuf,
    pub step: u64,
    pub meta: Value,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// The tensor `name`, or an error naming the file.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::file(
                &self.path,
                format!(
                    "checkpoint has no tensor `{name}` (written by a different model or version?)"
                ),
            )
        })
    }

    /// Reads a checkpoint file.
    pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref().to_path_buf();
        let mut tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
            .at(&path)?
            .into_iter()
            .collect();
        let meta_t = tensors
            .remove(META_TENSOR)
            .ok_or_else(|| Error::file(&path, "not a fewlabels checkpoint (no metadata)"))?;
        let bytes = Vec::<u8>::try_from(&meta_t).at(&path)?;
        let record: Value = serde_json::from_slice(&bytes).at(&path)?;
        let step = record
            .get("step")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::file(&path, "checkpoint metadata has no step"))?;
        let meta = record.get("meta").cloned().unwrap_or(Value::Null);
        Ok(Checkpoint {
            path,
            step,
            meta,
            tensors,
        })
    }
}

/// The checkpoints of one training run in one folder.
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

impl Checkpoints {
    pub fn new(dir: impl AsRef<Path>, keep: usize) -> Self {
        Checkpoints {
            dir: dir.as_ref().to_path_buf(),
            keep: keep.max(1),
        }
    }

    pub fn file_name(step: u64) -> String {
        format!("{PREFIX}{step:08}{SUFFIX}")
    }

    /// Writes checkpoint `step` atomically, then removes all but the last `keep`.
    pub fn save(&self, step: u64, tensors: &[(String, Tensor)], meta: &Value) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir).at(&self.dir)?;
        let path = self.dir.join(Self::file_name(step));
        let record = serde_json::json!({"step": step, "meta": meta});
        let meta_bytes = serde_json::to_vec(&record).at(&path)?;
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len() + 1);
        for (name, t) in tensors {
            if name == META_TENSOR {
                return Err(Error::invalid(format!(
                    "tensor name `{META_TENSOR}` is reserved"
                )));
            }
            named.push((name.clone(), t.detach().to_device(Device::Cpu).contiguous()));
        }
        named.push((META_TENSOR.to_string(), Tensor::from_slice(&meta_bytes)));
        let tmp = temp_path(&path);
        Tensor::write_safetensors(named.as_slice(), &tmp).at(&tmp)?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        self.prune()?;
        Ok(path)
    }

    /// Finished checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        for entry in entries {
            let entry = entry.at(&self.dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix(PREFIX)
                .and_then(|s| s.strip_suffix(SUFFIX))
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push((step, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest checkpoint, if any. A checkpoint that cannot be read
    /// (a disk error after the rename) is skipped with a warning for the one before.
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        let list = self.list()?;
        let mut last_err = None;
        for (_, path) in list.iter().rev() {
            match Checkpoint::load(path) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    tracing::warn!("skipping unreadable checkpoint: {e}");
                    last_err = Some(e);
                }
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    fn prune(&self) -> Result<()> {
        let list = self.list()?;
        if list.len() > self.keep {
            for (_, p) in &list[..list.len() - self.keep] {
                fs::remove_file(p).at(p)?;
            }
        }
        Ok(())
    }
}

/// Every variable of `vs` (trainable ones and buffers such as batch-norm
/// statistics), named `prefix + name`, sorted by name.
pub fn named_variables(vs: &VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("{prefix}{k}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies the tensors `prefix + name` of `ckpt` into the variables of `vs`;
/// every variable must be present with the same shape.
pub fn load_variables(vs: &VarStore, prefix: &str, ckpt: &Checkpoint) -> Result<()> {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let src = ckpt.get(&format!("{prefix}{name}"))?;
            if src.size() != var.size() {
                return Err(Error::file(
                    &ckpt.path,
                    format!(
                        "tensor `{prefix}{name}` has shape {:?}, the model expects {:?} (different model config?)",
                        src.size(),
                        var.size()
                    ),
                ));
            }
            var.f_copy_(src).at(&ckpt.path)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;
    use tch::Kind;

    #[test]
    fn save_load_keep_last() {
        let dir = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(dir.path(), 2);
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let _l = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let _b = nn::batch_norm1d(vs.root() / "bn", 2, Default::default());
        for step in [10u64, 20, 30] {
            let t = named_variables(&vs, "model.");
            ck.save(step, &t, &serde_json::json!({"epoch": step / 10}))
                .unwrap();
        }
        let steps: Vec<u64> = ck.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
        let c = ck.latest().unwrap().unwrap();
        assert_eq!(c.step, 30);
        assert_eq!(c.meta["epoch"], 3);
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _l2 = nn::linear(vs2.root() / "fc", 3, 2, Default::default());
        let _b2 = nn::batch_norm1d(vs2.root() / "bn", 2, Default::default());
        load_variables(&vs2, "model.", &c).unwrap();
        let vars2 = vs2.variables();
        for (k, t) in vs.variables() {
            let u = &vars2[&k];
            assert!(t.equal(u), "{k} differs after load");
            assert_eq!(u.kind(), Kind::Float);
        }
        // No temp files remain.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn shape_mismatch_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(dir.path(), 1);
        let vs = nn::VarStore::new(Device::Cpu);
        let _l = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        ck.save(1, &named_variables(&vs, ""), &Value::Null).unwrap();
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _l2 = nn::linear(vs2.root() / "fc", 4, 2, Default::default());
        let c = ck.latest().unwrap().unwrap();
        let e = load_variables(&vs2, "", &c).unwrap_err().to_string();
        assert!(
            e.contains("ckpt-00000001.safetensors") && e.contains("shape"),
            "{e}"
        );
    }
}
