//! The pipeline's stages (docs/design.md "Stages"), one module each behind one
//! [`Stage`] trait, and the [`REGISTRY`] that `main` and `pipeline` loop
//! over. Stages never call each other: they meet only through the tables in
//! the run directory.
//!
//! A stage declares its name, the folders it reads ([`Slot`]s: each becomes
//! a `--flag DIR` of its command and is filled from the run directory by
//! `fewlabels run`), its `Params` (everything that changes its output;
//! serde for pipeline files, clap for the command line, with the same
//! defaults), a range check of those parameters, the inputs it fingerprints
//! and the body that writes its folder. Adding a stage is one new module
//! and one line in [`REGISTRY`].
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, Args, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::device::{self, DeviceChoice};
use crate::dist::{Dist, Launch};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::progress::{self, Outcome};
use crate::stage::{run_stage_on, Input, StageName, StageRun};

pub mod cli_enums;
pub mod duplicates;
pub mod embed;
pub mod evaluate;
pub mod prepare;
pub mod pretrain;
pub mod pseudo_label;
pub mod sample_labels;
pub mod samples_folder;
pub mod shard;
pub mod tables;
pub mod train_gan;

/// Execution options: they change how fast a stage runs, never its output.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exec {
    /// Worker threads for decoding and libtorch (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where networks run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// The data-parallel job this process is a rank of (from the launcher's
    /// environment; a single process by default).
    #[arg(skip)]
    #[serde(skip)]
    pub dist: Dist,
}

/// A size in bytes as a person writes it: `268435456`, `256MiB`, `1.5GiB`,
/// `500kB` (KiB/MiB/GiB/TiB = 1024^n, kB/MB/GB/TB = 1000^n, B or none).
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let scale: f64 = match unit {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024f64.powi(2),
        "GiB" => 1024f64.powi(3),
        "TiB" => 1024f64.powi(4),
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use B, kB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: not a size (e.g. 268435456 or 256MiB)"))?;
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}`: out of range"));
    }
    Ok(bytes.round() as u64)
}

/// serde: a size in bytes as a number or as [`parse_bytes`] text (pipeline
/// files may say `max-file-bytes = "256MiB"`).
pub fn bytes_from_number_or_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Number(n) => Ok(n),
        Size::Text(t) => parse_bytes(&t).map_err(serde::de::Error::custom),
    }
}

/// The data-parallel job a command joins: a single process unless a
/// launcher (torchrun, srun, a PyTorchJob) started it. Only `distributed`
/// commands may be started as one of several ranks; the others say so
/// rather than run N times over the same folders.
pub fn join_launch(command: &str, distributed: bool, device: DeviceChoice) -> Result<Dist> {
    let Some(launch) = Launch::from_env()? else {
        return Ok(Dist::single());
    };
    if !distributed {
        if launch.world > 1 {
            return Err(Error::usage(format!(
                "`fewlabels {command}` runs in one process, but {} started this one as {}: only `train-gan` and `pretrain` train data-parallel",
                launch.launcher.name(),
                launch.who()
            )));
        }
        return Ok(Dist::single());
    }
    let dist = Dist::init(Some(launch), device.resolve()?)?;
    if !dist.is_rank0() {
        // One progress bar and one summary: rank 0's.
        progress::set_output_mode(true, false);
    }
    Ok(dist)
}

/// A folder a stage reads: a `--FLAG DIR` of its command, and in a
/// pipeline the folder of `stage` in the run directory.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// The command-line flag without dashes; also the slot's key in [`RunDirs`].
    pub flag: &'static str,
    /// The stage whose output the folder holds.
    pub stage: StageName,
    pub required: bool,
    /// The flag may be repeated (`evaluate --gan A --gan B`).
    pub multiple: bool,
    /// Filled by `fewlabels run` from the run directory; false for
    /// command-line-only slots.
    pub in_pipeline: bool,
    /// A word that stands for "no folder" (`embed --model pixels`), also the flag's default.
    pub none_word: Option<&'static str>,
    pub conflicts_with: Option<&'static str>,
    /// Required unless this other slot is given.
    pub required_unless: Option<&'static str>,
    pub help: &'static str,
}

impl Slot {
    pub const fn required(flag: &'static str, stage: StageName, help: &'static str) -> Slot {
        Slot {
            flag,
            stage,
            required: true,
            multiple: false,
            in_pipeline: true,
            none_word: None,
            conflicts_with: None,
            required_unless: None,
            help,
        }
    }

    pub const fn optional(flag: &'static str, stage: StageName, help: &'static str) -> Slot {
        Slot {
            required: false,
            ..Slot::required(flag, stage, help)
        }
    }

    fn arg(&self) -> clap::Arg {
        let mut a = clap::Arg::new(self.flag)
            .long(self.flag)
            .value_name("DIR")
            .help(self.help);
        a = match self.none_word {
            Some(word) => a
                .value_parser(clap::value_parser!(String))
                .default_value(word),
            None => a.value_parser(clap::value_parser!(PathBuf)),
        };
        if self.multiple {
            a = a.action(clap::ArgAction::Append);
        }
        if let Some(other) = self.required_unless {
            a = a.required_unless_present(other);
        } else if self.required {
            a = a.required(true);
        }
        if let Some(other) = self.conflicts_with {
            a = a.conflicts_with(other);
        }
        a
    }
}

/// The `images/` folder of `prepare`, which most stages read.
pub const IMAGES: Slot = Slot::required(
    "images",
    StageName::Prepare,
    "The `images/` folder of `prepare`.",
);

/// The folders a stage reads and the one it writes.
#[derive(Debug, Clone)]
pub struct RunDirs {
    /// The stage's own folder.
    pub output: PathBuf,
    slots: BTreeMap<&'static str, Vec<PathBuf>>,
}

impl RunDirs {
    pub fn new(output: impl Into<PathBuf>) -> Self {
        RunDirs {
            output: output.into(),
            slots: BTreeMap::new(),
        }
    }

    /// Adds a folder to a slot (library callers and the pipeline).
    pub fn with(mut self, slot: &Slot, dir: impl Into<PathBuf>) -> Self {
        self.slots.entry(slot.flag).or_default().push(dir.into());
        self
    }

    /// `self` with `slot` holding `dir` alone.
    pub fn replace(mut self, slot: &Slot, dir: impl Into<PathBuf>) -> Self {
        self.slots.insert(slot.flag, vec![dir.into()]);
        self
    }

    /// The folder given for `slot`, if any.
    pub fn get(&self, slot: &Slot) -> Option<&Path> {
        self.all(slot).first().map(PathBuf::as_path)
    }

    /// Every folder given for a repeatable slot.
    pub fn all(&self, slot: &Slot) -> &[PathBuf] {
        self.slots.get(slot.flag).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every folder given for `slots`, as the stage inputs they are.
    pub fn stage_inputs(&self, slots: &[Slot]) -> Vec<Input> {
        slots
            .iter()
            .flat_map(|s| self.all(s).iter().map(move |d| Input::stage(d, s.stage)))
            .collect()
    }

    /// The folder of a required slot.
    pub fn need(&self, slot: &Slot) -> Result<&Path> {
        self.get(slot).ok_or_else(|| {
            Error::usage(format!(
                "--{} DIR is needed: the folder `fewlabels {}` wrote",
                slot.flag, slot.stage
            ))
        })
    }
}

/// A parameter out of range, or parameters that contradict each other:
/// the key (as in a pipeline table) and what is wrong. The command line
/// shows it as `--KEY VALUE: MSG`, a pipeline as `FILE:LINE: STAGE.KEY = VALUE: MSG`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    pub key: &'static str,
    pub msg: String,
}

impl ParamError {
    pub fn new(key: &'static str, msg: impl Into<String>) -> Self {
        ParamError {
            key,
            msg: msg.into(),
        }
    }

    /// The error as the command line shows it, with the value from `params`.
    pub fn for_flags(&self, params: &serde_json::Value) -> Error {
        Error::usage(format!(
            "--{} {}: {}",
            self.key,
            show_value(params.get(self.key)),
            self.msg
        ))
    }
}

/// A parameter value as a user typed it (strings without JSON quotes).
pub fn show_value(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        // -1.0 as the user typed it: -1.
        Some(serde_json::Value::Number(n)) if n.is_f64() => {
            format!("{}", n.as_f64().unwrap_or(f64::NAN))
        }
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}

/// Checks that `value` is in `[lo, hi]` (both finite).
pub fn in_range(key: &'static str, value: f64, lo: f64, hi: f64) -> Result<(), ParamError> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(ParamError::new(key, format!("must be in [{lo}, {hi}]")))
    }
}

/// Checks that `value` is finite and > 0.
pub fn positive(key: &'static str, value: f64) -> Result<(), ParamError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ParamError::new(key, "must be a positive number"))
    }
}

/// Checks that a count is at least `min`.
pub fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), ParamError> {
    if value >= min {
        Ok(())
    } else {
        Err(ParamError::new(key, format!("must be at least {min}")))
    }
}

/// What a stage's parameters must be.
pub trait StageParams:
    Args + Serialize + DeserializeOwned + Default + Clone + PartialEq + Debug + Send + Sync
{
}
impl<T> StageParams for T where
    T: Args + Serialize + DeserializeOwned + Default + Clone + PartialEq + Debug + Send + Sync
{
}

/// One stage of the pipeline.
pub trait Stage: 'static {
    const NAME: StageName;
    /// Trains data-parallel when a launcher starts it as several ranks
    /// (`exec.dist`); other stages refuse such a launch.
    const DISTRIBUTED: bool = false;
    /// One line for `fewlabels --help`.
    const ABOUT: &'static str;
    /// Help of `--output` (what the stage writes there).
    const OUTPUT: &'static str;
    /// The folders it reads.
    const SLOTS: &'static [Slot];
    /// Runs a network (libtorch), so that `--device` acts; the stages that
    /// only decode, hash and write tables neither offer nor take it.
    const RUNS_NETWORKS: bool = true;
    type Params: StageParams;

    /// Ranges of the parameters, checked before anything runs (in `run
    /// --plan` too). Must not touch the disk.
    fn validate(params: &Self::Params) -> Result<(), ParamError> {
        let _ = params;
        Ok(())
    }

    /// Checks of the parameters against the folders given, before anything runs.
    fn check(dirs: &RunDirs, params: &Self::Params) -> Result<()> {
        let _ = (dirs, params);
        Ok(())
    }

    /// What the stage reads, for fingerprinting (by `execute` and by `run
    /// --plan`): by default the folders of its slots.
    fn inputs(dirs: &RunDirs, params: &Self::Params) -> Vec<Input> {
        let _ = params;
        dirs.stage_inputs(Self::SLOTS)
    }

    /// Writes the stage's outputs into `run.dir` (its manifest follows).
    fn run(dirs: &RunDirs, params: &Self::Params, exec: &Exec, run: &mut StageRun) -> Result<()>;

    /// Runs the stage unless it is up to date.
    fn execute(dirs: &RunDirs, params: &Self::Params, exec: &Exec) -> Result<(Manifest, Outcome)> {
        let json = serde_json::to_value(params).unwrap_or_default();
        Self::validate(params).map_err(|e| e.for_flags(&json))?;
        Self::check(dirs, params)?;
        run_stage_on(
            exec.dist,
            Self::NAME,
            &dirs.output,
            params,
            &Self::inputs(dirs, params),
            |run| Self::run(dirs, params, exec, run),
        )
    }
}

/// A stage seen through the registry: its parameters travel as the JSON
/// its manifest records.
pub trait AnyStage: Sync {
    fn name(&self) -> StageName;
    fn slots(&self) -> &'static [Slot];
    /// Its subcommand.
    fn command(&self) -> clap::Command;
    /// Runs the subcommand.
    fn main(&self, matches: &ArgMatches) -> Result<()>;
    /// Parses a pipeline table into the parameters' JSON.
    fn parse_owned(
        &self,
        table: toml::Value,
    ) -> std::result::Result<serde_json::Value, toml::de::Error>;
    /// The same from the file's text, so that an error carries its span.
    fn parse_spanned(
        &self,
        table: toml::de::ValueDeserializer<'_>,
    ) -> std::result::Result<serde_json::Value, toml::de::Error>;
    fn validate(&self, params: &serde_json::Value) -> Result<(), ParamError>;
    fn check(&self, dirs: &RunDirs, params: &serde_json::Value) -> Result<()>;
    fn inputs(&self, dirs: &RunDirs, params: &serde_json::Value) -> Result<Vec<Input>>;
    fn execute(
        &self,
        dirs: &RunDirs,
        params: &serde_json::Value,
        exec: &Exec,
    ) -> Result<(Manifest, Outcome)>;
    /// The defaults as the command line gives them (required flags
    /// excepted) and as an empty pipeline table gives them.
    fn defaults(&self) -> (serde_json::Value, serde_json::Value);
}

struct Entry<S>(PhantomData<fn() -> S>);

impl<S: Stage> Entry<S> {
    fn typed(params: &serde_json::Value) -> Result<S::Params> {
        serde_json::from_value(params.clone())
            .map_err(|e| Error::invalid(format!("{}: parameters: {e}", S::NAME)))
    }
}

impl<S: Stage> AnyStage for Entry<S> {
    fn name(&self) -> StageName {
        S::NAME
    }

    fn slots(&self) -> &'static [Slot] {
        S::SLOTS
    }

    fn command(&self) -> clap::Command {
        let mut cmd = clap::Command::new(S::NAME.as_str()).about(S::ABOUT);
        for slot in S::SLOTS {
            cmd = cmd.arg(slot.arg());
        }
        cmd = cmd.arg(
            clap::Arg::new("output")
                .long("output")
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .required(true)
                .help(S::OUTPUT),
        );
        // The derive's doc comments of Params and Exec would each set the
        // command's description: the stage's own is set last.
        let cmd = S::Params::augment_args(cmd)
            .next_help_heading("Execution (how fast it runs, never what it writes)");
        let cmd = Exec::augment_args(cmd);
        let cmd = if S::RUNS_NETWORKS {
            cmd
        } else {
            cmd.mut_arg("device", |a| a.hide(true))
        };
        cmd.about(S::ABOUT)
            .long_about(None)
            // `--lr-g -1` is a value to refuse with a reason, not an unknown flag.
            .mut_args(|a| {
                let values = a.get_action().takes_values();
                a.allow_negative_numbers(values)
            })
    }

    fn main(&self, m: &ArgMatches) -> Result<()> {
        let params = S::Params::from_arg_matches(m).map_err(|e| Error::usage(e.to_string()))?;
        let mut exec = Exec::from_arg_matches(m).map_err(|e| Error::usage(e.to_string()))?;
        if !S::RUNS_NETWORKS
            && m.value_source("device") == Some(clap::parser::ValueSource::CommandLine)
        {
            return Err(Error::usage(format!(
                "--device: `fewlabels {}` runs no network (it decodes and writes tables on --threads CPU threads); leave the flag out",
                S::NAME
            )));
        }
        let output = m
            .get_one::<PathBuf>("output")
            .cloned()
            .ok_or_else(|| Error::usage("--output DIR is needed"))?;
        let mut dirs = RunDirs::new(output);
        for slot in S::SLOTS {
            if slot.none_word.is_some() {
                if let Some(v) = m.get_one::<String>(slot.flag) {
                    if Some(v.as_str()) != slot.none_word {
                        dirs = dirs.with(slot, v);
                    }
                }
            } else if let Some(values) = m.get_many::<PathBuf>(slot.flag) {
                for v in values {
                    dirs = dirs.with(slot, v);
                }
            }
        }
        device::set_threads(exec.threads);
        exec.dist = join_launch(S::NAME.as_str(), S::DISTRIBUTED, exec.device)?;
        S::execute(&dirs, &params, &exec).map(|_| ())
    }

    fn parse_owned(
        &self,
        table: toml::Value,
    ) -> std::result::Result<serde_json::Value, toml::de::Error> {
        let p = S::Params::deserialize(table)?;
        Ok(serde_json::to_value(p).expect("parameters serialise"))
    }

    fn parse_spanned(
        &self,
        table: toml::de::ValueDeserializer<'_>,
    ) -> std::result::Result<serde_json::Value, toml::de::Error> {
        let p = S::Params::deserialize(table)?;
        Ok(serde_json::to_value(p).expect("parameters serialise"))
    }

    fn validate(&self, params: &serde_json::Value) -> Result<(), ParamError> {
        match Self::typed(params) {
            Ok(p) => S::validate(&p),
            Err(e) => Err(ParamError::new("", e.to_string())),
        }
    }

    fn check(&self, dirs: &RunDirs, params: &serde_json::Value) -> Result<()> {
        S::check(dirs, &Self::typed(params)?)
    }

    fn inputs(&self, dirs: &RunDirs, params: &serde_json::Value) -> Result<Vec<Input>> {
        Ok(S::inputs(dirs, &Self::typed(params)?))
    }

    fn execute(
        &self,
        dirs: &RunDirs,
        params: &serde_json::Value,
        exec: &Exec,
    ) -> Result<(Manifest, Outcome)> {
        S::execute(dirs, &Self::typed(params)?, exec)
    }

    fn defaults(&self) -> (serde_json::Value, serde_json::Value) {
        let cmd = S::Params::augment_args(clap::Command::new("x"));
        let mut argv = vec!["x".to_string()];
        let mut required = Vec::new();
        for a in cmd.get_arguments().filter(|a| a.is_required_set()) {
            let long = a.get_long().expect("parameters are long flags");
            argv.push(format!("--{long}"));
            argv.push("x".into());
            required.push(long.to_string());
        }
        let m = cmd
            .try_get_matches_from(argv)
            .expect("parameters parse with only their required flags");
        let from_cli = serde_json::to_value(S::Params::from_arg_matches(&m).expect("from matches"))
            .expect("serialise");
        let from_toml: S::Params = toml::from_str("").expect("an empty table parses");
        let mut from_toml = serde_json::to_value(from_toml).expect("serialise");
        let mut from_cli = from_cli;
        for key in required {
            for v in [&mut from_cli, &mut from_toml] {
                if let Some(o) = v.as_object_mut() {
                    o.remove(&key);
                }
            }
        }
        (from_cli, from_toml)
    }
}

/// Every stage, in run order.
pub static REGISTRY: [&dyn AnyStage; 9] = [
    &Entry::<prepare::Prepare>(PhantomData),
    &Entry::<duplicates::Duplicates>(PhantomData),
    &Entry::<sample_labels::SampleLabels>(PhantomData),
    &Entry::<pretrain::Pretrain>(PhantomData),
    &Entry::<embed::Embed>(PhantomData),
    &Entry::<pseudo_label::PseudoLabel>(PhantomData),
    &Entry::<shard::Shard>(PhantomData),
    &Entry::<train_gan::TrainGan>(PhantomData),
    &Entry::<evaluate::Evaluate>(PhantomData),
];

/// The registry entry of a stage.
pub fn lookup(name: StageName) -> &'static dyn AnyStage {
    *REGISTRY
        .iter()
        .find(|s| s.name() == name)
        .expect("every stage is registered")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_the_units_people_write() {
        assert_eq!(parse_bytes("268435456"), Ok(268_435_456));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("500kB"), Ok(500_000));
        assert_eq!(parse_bytes(" 2 GB "), Ok(2_000_000_000));
        assert!(parse_bytes("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_bytes("MiB").is_err());
    }

    #[test]
    fn registry_is_in_run_order_and_complete() {
        let names: Vec<StageName> = REGISTRY.iter().map(|s| s.name()).collect();
        assert_eq!(names, StageName::ALL.to_vec());
    }

    /// `fewlabels STAGE` and an empty pipeline table give the same parameters.
    #[test]
    fn command_line_and_pipeline_defaults_agree() {
        for s in REGISTRY {
            let (cli, toml) = s.defaults();
            assert_eq!(cli, toml, "{} defaults", s.name());
            assert!(s.validate(&toml).is_ok() || s.name() == StageName::Prepare);
        }
    }

    #[test]
    fn slots_name_distinct_flags() {
        for s in REGISTRY {
            let cmd = s.command();
            cmd.debug_assert();
        }
    }
}
