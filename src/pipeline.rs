//! Pipeline files: one TOML table per stage, run in order in one run
//! directory, skipping stages whose inputs and parameters are unchanged.
//!
//! ```toml
//! [pipeline]
//! name = "demo"
//! run-dir = "runs/demo"          # default: runs/<file stem>
//!
//! [prepare]
//! input = "/usr/share/datasets/fashion-mnist"
//! size = 32
//!
//! [sample-labels]
//! fraction = 0.1
//! ```
//! Every table's keys are the stage's parameters (`fewlabels STAGE --help`);
//! the folders between stages are fixed names inside the run directory, and
//! `--set TABLE.KEY=VALUE` changes any key without editing the file.
//!
//! Everything is checked before any stage runs, `--plan` included: the
//! tables and keys, every parameter's range, the wiring between stages and
//! the constraints across them. Errors name the file and line (or the
//! `--set` that caused them). `fewlabels run` holds the run directory's lock
//! for the whole run, so two runs never write one directory.
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gan::modes::{GanMode, LabelsNeeded};
use crate::manifest::Manifest;
use crate::progress::{self, Outcome};
use crate::stage::{self, lock_dir, Input, StageName};
use crate::stages::{self, pseudo_label, shard, show_value, AnyStage, Exec, ParamError, RunDirs};

/// The `[pipeline]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Header {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Where the stage folders go; relative paths are relative to the current directory.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
}

/// `fewlabels run`.
#[derive(clap::Args, Debug)]
pub struct Cli {
    /// The pipeline file (see pipelines/).
    pub pipeline: PathBuf,
    /// Run directory (overrides the file's `run-dir`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Stop after this stage.
    #[arg(long)]
    pub until: Option<String>,
    /// Print what would run and why, and run nothing.
    #[arg(long)]
    pub plan: bool,
    /// Change one key of the file: `--set train-gan.steps=2`, `--set
    /// prepare.input='"/data/x.tar"'` (a TOML value; a bare word is a string). Repeatable.
    #[arg(long, value_name = "TABLE.KEY=VALUE")]
    pub set: Vec<String>,
}

/// One `--set TABLE.KEY=VALUE`.
#[derive(Debug, Clone)]
pub struct Override {
    pub table: String,
    pub key: String,
    pub value: toml::Value,
    /// As the user typed it, for messages.
    pub text: String,
}

impl Override {
    pub fn parse(text: &str) -> Result<Override> {
        let bad = |why: &str| Error::usage(format!("--set {text}: {why}"));
        let (lhs, rhs) = text
            .split_once('=')
            .ok_or_else(|| bad("expected TABLE.KEY=VALUE, e.g. train-gan.steps=2"))?;
        let (table, key) = lhs
            .trim()
            .split_once('.')
            .ok_or_else(|| bad("expected TABLE.KEY before `=`, e.g. train-gan.steps"))?;
        if table.is_empty() || key.is_empty() || key.contains('.') {
            return Err(bad("expected one table and one key, e.g. train-gan.steps"));
        }
        let rhs = rhs.trim();
        // A TOML value; a bare word (`--set train-gan.mode=s3gan`) is taken as a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {rhs}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(rhs.to_string()));
        Ok(Override {
            table: table.to_string(),
            key: key.to_string(),
            value,
            text: text.to_string(),
        })
    }
}

/// A stage of a pipeline, as planned: its parameters as its manifest
/// records them, its folders and the inputs it fingerprints.
pub struct Step {
    pub stage: &'static dyn AnyStage,
    pub params: serde_json::Value,
    pub dirs: RunDirs,
    pub inputs: Vec<Input>,
    /// The table and key its input path comes from, when not its own
    /// (the reference images `[evaluate] reference` names).
    pub input_key: Option<(StageName, &'static str)>,
}

impl Step {
    pub fn name(&self) -> StageName {
        self.stage.name()
    }
}

/// A parsed and checked pipeline.
pub struct Pipeline {
    pub path: PathBuf,
    pub source: String,
    pub header: Header,
    pub exec: Exec,
    pub run_dir: PathBuf,
    pub overrides: Vec<Override>,
    /// The stages the file has, in run order.
    pub steps: Vec<Step>,
}

/// Parameters of each stage table, before wiring.
struct Tables {
    header: Header,
    exec: Exec,
    params: Vec<(&'static dyn AnyStage, serde_json::Value)>,
}

impl Pipeline {
    /// Reads and checks a pipeline file. With `paths_aside` (for `--plan`), a
    /// missing input path is not an error: the plan says so instead.
    pub fn load(
        path: &Path,
        run_dir: Option<&Path>,
        overrides: &[Override],
        paths_aside: bool,
    ) -> Result<Pipeline> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read pipeline file: {e}")))?;
        let mut p = Pipeline {
            path: path.to_path_buf(),
            source,
            header: Header::default(),
            exec: Exec::default(),
            run_dir: PathBuf::new(),
            overrides: overrides.to_vec(),
            steps: Vec::new(),
        };
        let tables = p.parse_tables()?;
        p.header = tables.header;
        p.exec = tables.exec;
        p.run_dir = match (run_dir, &p.header.run_dir) {
            (Some(d), _) => d.to_path_buf(),
            (None, Some(d)) => d.clone(),
            (None, None) => PathBuf::from("runs").join(path.file_stem().unwrap_or_default()),
        };
        for (stage, params) in &tables.params {
            if let Err(e) = stage.validate(params) {
                return Err(p.param_error(stage.name(), &e, params));
            }
        }
        p.cross_check(&tables.params)?;
        let mode = tables
            .params
            .iter()
            .find(|(s, _)| s.name() == StageName::TrainGan)
            .and_then(|(_, v)| v.get("mode"))
            .and_then(|m| serde_json::from_value::<GanMode>(m.clone()).ok());
        let present: Vec<StageName> = tables.params.iter().map(|(s, _)| s.name()).collect();
        let reference = p.reference(&tables.params)?;
        let mut reference_prepared = false;
        for (stage, params) in tables.params {
            let mut dirs = p.wire(stage, &present, mode)?;
            // The evaluation reference: what `evaluate` scores against, and
            // what `duplicates` looks for copies of the training images in.
            let reference_slot = match stage.name() {
                StageName::Duplicates => Some(&stages::duplicates::REFERENCE),
                StageName::Evaluate => Some(&stages::evaluate::REFERENCE),
                // Only a train-gan that scores while it trains reads it.
                StageName::TrainGan
                    if params.get("eval-every").and_then(|v| v.as_u64()) > Some(0) =>
                {
                    Some(&stages::train_gan::REFERENCE)
                }
                _ => None,
            };
            if let (Some(slot), Some((dir, prepare))) = (reference_slot, &reference) {
                if let (Some(params), false) = (prepare, reference_prepared) {
                    // The reference images, prepared as the training images
                    // are, before the first stage that reads them.
                    let prep = stages::lookup(StageName::Prepare);
                    let pdirs = RunDirs::new(dir);
                    p.steps.push(Step {
                        stage: prep,
                        inputs: prep.inputs(&pdirs, params)?,
                        params: params.clone(),
                        dirs: pdirs,
                        input_key: Some((StageName::Evaluate, "reference")),
                    });
                    reference_prepared = true;
                }
                dirs = dirs.replace(slot, dir);
            } else if stage.name() == StageName::TrainGan && reference_slot.is_some() {
                // No [evaluate] reference: the run's own images, as evaluate's default.
                dirs = dirs.replace(&stages::train_gan::REFERENCE, p.dir(StageName::Prepare));
            }
            stage
                .check(&dirs, &params)
                .map_err(|e| p.at_table(stage.name(), &e.to_string()))?;
            let inputs = stage.inputs(&dirs, &params)?;
            p.steps.push(Step {
                stage,
                params,
                dirs,
                inputs,
                input_key: None,
            });
        }
        if !paths_aside {
            p.check_paths()?;
        }
        Ok(p)
    }

    /// The folder of a stage in the run directory.
    pub fn dir(&self, stage: StageName) -> PathBuf {
        self.run_dir.join(stage.folder())
    }

    /// The first line of `[table]`, for messages.
    fn line_of(&self, table: &str) -> usize {
        let header = format!("[{table}]");
        self.source
            .lines()
            .position(|l| l.trim_start().starts_with(&header))
            .map(|i| i + 1)
            .unwrap_or(1)
    }

    /// The line of `key` inside `[table]` (the table's line when the key is absent).
    fn line_of_key(&self, table: &str, key: &str) -> usize {
        let start = self.line_of(table);
        for (i, l) in self.source.lines().enumerate().skip(start) {
            let t = l.trim_start();
            if t.starts_with('[') {
                break;
            }
            if t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
            {
                return i + 1;
            }
        }
        start
    }

    fn override_of(&self, table: &str, key: &str) -> Option<&Override> {
        self.overrides
            .iter()
            .rev()
            .find(|o| o.table == table && o.key == key)
    }

    /// A parameter error as `FILE:LINE: TABLE.KEY = VALUE: MSG`, or naming the `--set`.
    fn param_error(&self, stage: StageName, e: &ParamError, params: &serde_json::Value) -> Error {
        let table = stage.as_str();
        if let Some(o) = self.override_of(table, e.key) {
            return Error::usage(format!("--set {}: {}", o.text, e.msg));
        }
        let value = match params.get(e.key) {
            Some(serde_json::Value::String(s)) => format!("{s:?}"),
            v => show_value(v),
        };
        Error::usage(format!(
            "{}:{}: {table}.{} = {value}: {}",
            self.path.display(),
            self.line_of_key(table, e.key),
            e.key,
            e.msg
        ))
    }

    /// An error about a whole table, as `FILE:LINE: [TABLE] MSG`.
    fn at_table(&self, stage: StageName, msg: &str) -> Error {
        Error::usage(format!(
            "{}:{}: [{stage}] {msg}",
            self.path.display(),
            self.line_of(stage.as_str())
        ))
    }

    /// Parses the file's tables, with the `--set` overrides applied.
    fn parse_tables(&self) -> Result<Tables> {
        let path = &self.path;
        let source = &self.source;
        let mut doc: toml::Table =
            toml::from_str(source).map_err(|e| toml_error(path, source, &e))?;
        for o in &self.overrides {
            let known = o.table == "pipeline" || o.table == "exec";
            if !known && StageName::parse(&o.table).is_none() {
                return Err(Error::usage(format!(
                    "--set {}: no table `{}`; the tables are pipeline, exec and the stages ({})",
                    o.text,
                    o.table,
                    stage_list()
                )));
            }
            if !known && !doc.contains_key(&o.table) {
                return Err(Error::usage(format!(
                    "--set {}: {} has no [{}] table; add it to the file to run that stage",
                    o.text,
                    path.display(),
                    o.table
                )));
            }
            let table = doc
                .entry(o.table.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match table {
                toml::Value::Table(t) => {
                    t.insert(o.key.clone(), o.value.clone());
                }
                _ => {
                    return Err(Error::usage(format!(
                        "--set {}: `{}` is not a table",
                        o.text, o.table
                    )))
                }
            }
        }
        for (key, value) in &doc {
            let known = key == "pipeline" || key == "exec" || StageName::parse(key).is_some();
            if !known {
                return Err(Error::usage(format!(
                    "{}:{}: unknown table [{key}]; the tables are pipeline, exec and the stages ({})",
                    path.display(),
                    self.line_of(key),
                    stage_list()
                )));
            }
            if !value.is_table() {
                return Err(Error::usage(format!(
                    "{}:{}: `{key}` must be a table ([{key}])",
                    path.display(),
                    self.line_of(key)
                )));
            }
        }
        let header: Header = self
            .table_value(&doc, "pipeline", &Typed::<Header>(PhantomData))?
            .map(|v| serde_json::from_value(v).expect("round trip"))
            .unwrap_or_default();
        let exec: Exec = self
            .table_value(&doc, "exec", &Typed::<Exec>(PhantomData))?
            .map(|v| serde_json::from_value(v).expect("round trip"))
            .unwrap_or_default();
        let mut params = Vec::new();
        for stage in stages::REGISTRY {
            if let Some(v) = self.table_value(&doc, stage.name().as_str(), &StageTable(stage))? {
                params.push((stage, v));
            }
        }
        Ok(Tables {
            header,
            exec,
            params,
        })
    }

    /// Deserialises table `name` of the merged document. An error is located
    /// in the file through its spans, or blamed on the `--set` that caused it.
    fn table_value(
        &self,
        doc: &toml::Table,
        name: &str,
        parser: &dyn ParseTable,
    ) -> Result<Option<serde_json::Value>> {
        let Some(value) = doc.get(name) else {
            return Ok(None);
        };
        let e = match parser.owned(value.clone()) {
            Ok(v) => return Ok(Some(v)),
            Err(e) => e,
        };
        // The file's own table, with spans: if it fails too, its line is the place.
        if let Some(table) = toml::de::DeTable::parse(&self.source)
            .ok()
            .and_then(|root| {
                let root = toml::de::DeValue::Table(root.into_inner());
                root.get(name).cloned()
            })
        {
            if let Err(e) = parser.spanned(toml::de::ValueDeserializer::from(table)) {
                return Err(toml_error(&self.path, &self.source, &e));
            }
        }
        let set: Vec<&str> = self
            .overrides
            .iter()
            .filter(|o| o.table == name)
            .map(|o| o.text.as_str())
            .collect();
        Err(Error::usage(format!(
            "--set {}: [{name}] {}",
            set.join(" --set "),
            e.message().trim().replace('\n', " ")
        )))
    }

    /// `[evaluate] reference`: the folder evaluate compares with, and the
    /// parameters of the `prepare` step that makes it when the reference is
    /// an input rather than a finished `prepare` folder.
    #[allow(clippy::type_complexity)]
    fn reference(
        &self,
        params: &[(&'static dyn AnyStage, serde_json::Value)],
    ) -> Result<Option<(PathBuf, Option<serde_json::Value>)>> {
        let get = |s: StageName| params.iter().find(|(st, _)| st.name() == s).map(|x| &x.1);
        let Some(path) = get(StageName::Evaluate)
            .and_then(|e| e.get("reference"))
            .and_then(|r| r.as_str())
            .map(PathBuf::from)
        else {
            return Ok(None);
        };
        let finished = Manifest::read(&path)
            .ok()
            .flatten()
            .is_some_and(|m| m.complete && m.stage == StageName::Prepare);
        if finished {
            return Ok(Some((path, None)));
        }
        let place = match self.override_of("evaluate", "reference") {
            Some(o) => format!("--set {}", o.text),
            None => format!(
                "{}:{}",
                self.path.display(),
                self.line_of_key("evaluate", "reference")
            ),
        };
        let Some(prepare) = get(StageName::Prepare) else {
            return Err(Error::usage(format!(
                "{place}: [evaluate] reference `{}` is not a finished prepare folder, so it is prepared like the training images: add a [prepare] table (or give a prepared folder)",
                path.display()
            )));
        };
        // As the training images are prepared, but at the samples' size and
        // as compare_gan evaluates: the centred square ("middle" crop)
        // resized to the GAN's resolution, so that FID compares 128 with 128.
        let mut p = prepare.clone();
        p["input"] = serde_json::json!(path);
        p["shard-index"] = serde_json::json!(0);
        p["num-shards"] = serde_json::json!(1);
        p["resize"] = serde_json::json!(crate::codec::Resize::Crop);
        if let Some(r) = get(StageName::TrainGan)
            .and_then(|g| g.get("resolution"))
            .and_then(|r| r.as_u64())
        {
            p["size"] = serde_json::json!(r);
        }
        Ok(Some((self.run_dir.join("reference"), Some(p))))
    }

    /// The folders `stage` reads, from the run directory.
    fn wire(
        &self,
        stage: &'static dyn AnyStage,
        tables: &[StageName],
        mode: Option<GanMode>,
    ) -> Result<RunDirs> {
        let name = stage.name();
        let present = |s: StageName| {
            tables.contains(&s)
                || Manifest::read(&self.dir(s))
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.complete)
        };
        let mut dirs = RunDirs::new(self.dir(name));
        for slot in stage.slots().iter().filter(|s| s.in_pipeline) {
            let labels = matches!(slot.stage, StageName::PseudoLabel | StageName::SampleLabels);
            if name == StageName::Shard && labels {
                continue; // wired below, by the GAN mode
            }
            if slot.stage == StageName::Duplicates {
                // Only a [duplicates] table drops rows from the shards, never
                // a folder left in the run directory by an earlier file.
                if tables.contains(&slot.stage) {
                    dirs = dirs.with(slot, self.dir(slot.stage));
                }
                continue;
            }
            if present(slot.stage) {
                dirs = dirs.with(slot, self.dir(slot.stage));
            } else if slot.required {
                return Err(self.needs(name, slot.stage));
            }
        }
        if name == StageName::Shard {
            // The training labels follow the GAN mode that reads the shards.
            let needed = match mode {
                Some(mode) => mode.labels_needed(),
                None if present(StageName::PseudoLabel) => LabelsNeeded::PseudoLabels,
                None if present(StageName::SampleLabels) => LabelsNeeded::Subset,
                None => LabelsNeeded::True,
            };
            let (slot, from) = match needed {
                LabelsNeeded::PseudoLabels => (&shard::PSEUDO_LABELS, StageName::PseudoLabel),
                LabelsNeeded::Subset => (&shard::SUBSET, StageName::SampleLabels),
                LabelsNeeded::True => return Ok(dirs),
            };
            if !present(from) {
                return Err(self.needs(name, from));
            }
            dirs = dirs.with(slot, self.dir(from));
        }
        Ok(dirs)
    }

    fn needs(&self, stage: StageName, upstream: StageName) -> Error {
        Error::usage(format!(
            "{}:{}: [{stage}] needs the output of [{upstream}] ({}); add a [{upstream}] table",
            self.path.display(),
            self.line_of(stage.as_str()),
            self.dir(upstream).display()
        ))
    }

    /// Constraints between stages' parameters.
    fn cross_check(&self, params: &[(&'static dyn AnyStage, serde_json::Value)]) -> Result<()> {
        let get = |s: StageName| params.iter().find(|(st, _)| st.name() == s).map(|x| &x.1);
        let prepare = get(StageName::Prepare);
        if let (Some(prep), Some(gan)) = (prepare, get(StageName::TrainGan)) {
            let size = prep.get("size").and_then(|v| v.as_i64()).unwrap_or(0);
            let res = gan.get("resolution").and_then(|v| v.as_i64());
            let distorted = gan.get("augment").and_then(|v| v.as_str()) == Some("distorted");
            let at = |msg: String| {
                format!(
                    "{msg} (prepare.size = {size}, line {})",
                    self.line_of_key("prepare", "size")
                )
            };
            let augment = if distorted {
                stages::train_gan::Augment::Distorted
            } else {
                stages::train_gan::Augment::None
            };
            let problem = match res {
                None if distorted => Some(at(
                    "augment = \"distorted\" needs the resolution to train at; the crops come from the stored images".into(),
                )),
                None if !crate::models::biggan::Config::RESOLUTIONS.contains(&size) => Some(at(
                    format!("not given, so the images' size {size}, for which no BigGAN preset exists (32, 64, 128); set it"),
                )),
                Some(r) => stages::train_gan::fit_problem(augment, size, r).map(at),
                None => None,
            };
            if let Some(msg) = problem {
                let e = ParamError::new("resolution", msg);
                return Err(self.param_error(StageName::TrainGan, &e, gan));
            }
        }
        if let (Some(pl), Some(gan)) = (get(StageName::PseudoLabel), get(StageName::TrainGan)) {
            let method: Option<pseudo_label::Method> = pl
                .get("method")
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            let mode: Option<GanMode> = gan
                .get("mode")
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            let clash = match (mode, method) {
                (Some(GanMode::S2gan | GanMode::S3gan), Some(pseudo_label::Method::Kmeans)) => {
                    Some("trains on a classifier's labels, but pseudo-label.method = \"kmeans\" makes clusters: use mode \"clustering\" (or \"clustering-ss\"), or method \"classifier\"")
                }
                (
                    Some(GanMode::Clustering | GanMode::ClusteringSs),
                    Some(pseudo_label::Method::Classifier),
                ) => Some("trains on k-means clusters, but pseudo-label.method = \"classifier\" predicts classes: use mode \"s2gan\" (or \"s3gan\"), or method \"kmeans\""),
                _ => None,
            };
            if let Some(msg) = clash {
                return Err(self.param_error(
                    StageName::TrainGan,
                    &ParamError::new("mode", msg),
                    gan,
                ));
            }
            if method == Some(pseudo_label::Method::Classifier)
                && get(StageName::Pretrain).is_none()
                && !self
                    .dir(StageName::Pretrain)
                    .join(crate::manifest::MANIFEST_FILE)
                    .exists()
            {
                let e = ParamError::new(
                    "method",
                    "needs a trained classifier: add a [pretrain] table (with [sample-labels] for its head)",
                );
                return Err(self.param_error(StageName::PseudoLabel, &e, pl));
            }
        }
        Ok(())
    }

    /// The user's files exist (not for `--plan`, which reports them instead).
    fn check_paths(&self) -> Result<()> {
        for step in &self.steps {
            for input in &step.inputs {
                let Input::Path(p) = input else { continue };
                if p.exists() {
                    continue;
                }
                let (table, key, what) = match (step.input_key, step.name()) {
                    (Some((table, key)), _) => (
                        table.as_str(),
                        key,
                        "fix the path to the reference images (a folder, tar or list file)",
                    ),
                    (None, StageName::Prepare) => (
                        "prepare",
                        "input",
                        "fix the path (or run `make setup` for the demo data)",
                    ),
                    (None, StageName::SampleLabels) => (
                        "sample-labels",
                        "from",
                        "fix the path to your CSV or Parquet list of labelled images",
                    ),
                    (None, other) => (other.as_str(), "", "fix the path"),
                };
                let place = match self.override_of(table, key) {
                    Some(o) => format!("--set {}", o.text),
                    None => format!("{}:{}", self.path.display(), self.line_of_key(table, key)),
                };
                return Err(Error::invalid(format!(
                    "{place}: [{table}] {key} `{}` does not exist; {what}",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

fn stage_list() -> String {
    StageName::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses one table of a pipeline file into the JSON a manifest records.
trait ParseTable {
    fn owned(&self, v: toml::Value) -> std::result::Result<serde_json::Value, toml::de::Error>;
    fn spanned(
        &self,
        v: toml::de::ValueDeserializer<'_>,
    ) -> std::result::Result<serde_json::Value, toml::de::Error>;
}

/// A table of a fixed type (`[pipeline]`, `[exec]`).
struct Typed<T>(PhantomData<T>);

impl<T: DeserializeOwned + Serialize> ParseTable for Typed<T> {
    fn owned(&self, v: toml::Value) -> std::result::Result<serde_json::Value, toml::de::Error> {
        let t = T::deserialize(v)?;
        Ok(serde_json::to_value(t).expect("serialise"))
    }
    fn spanned(
        &self,
        v: toml::de::ValueDeserializer<'_>,
    ) -> std::result::Result<serde_json::Value, toml::de::Error> {
        let t = T::deserialize(v)?;
        Ok(serde_json::to_value(t).expect("serialise"))
    }
}

/// A stage's table.
struct StageTable(&'static dyn AnyStage);

impl ParseTable for StageTable {
    fn owned(&self, v: toml::Value) -> std::result::Result<serde_json::Value, toml::de::Error> {
        self.0.parse_owned(v)
    }
    fn spanned(
        &self,
        v: toml::de::ValueDeserializer<'_>,
    ) -> std::result::Result<serde_json::Value, toml::de::Error> {
        self.0.parse_spanned(v)
    }
}

/// Why a stage would run, or that it would not.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "kebab-case")]
pub enum Decision {
    UpToDate,
    Run(String),
}

/// Decides each step's fate without running anything. Finished outputs are
/// verified: a damaged or truncated file makes its stage "run".
pub fn plan(steps: &[&Step]) -> Vec<Decision> {
    let mut decisions = Vec::new();
    let mut upstream_runs: Vec<StageName> = Vec::new();
    for step in steps {
        let d = decide(step, &upstream_runs);
        if matches!(d, Decision::Run(_)) {
            upstream_runs.push(step.name());
        }
        decisions.push(d);
    }
    decisions
}

fn decide(step: &Step, upstream_runs: &[StageName]) -> Decision {
    let dir = &step.dirs.output;
    // Inputs are fingerprinted after their own stage ran; an upstream re-run may or may not change them.
    let after: Vec<&str> = step
        .inputs
        .iter()
        .filter_map(|i| match i {
            Input::Stage { stage, .. } if upstream_runs.contains(stage) => Some(stage.as_str()),
            _ => None,
        })
        .collect();
    if after.is_empty() {
        return match stage::fingerprint(&step.inputs) {
            Err(e) => Decision::Run(format!("inputs not ready ({e})")),
            Ok(fp) => match stage::up_to_date(dir, step.name(), &step.params, &fp) {
                Ok(_) => Decision::UpToDate,
                Err(why) => Decision::Run(why),
            },
        };
    }
    // Its own state first (a changed parameter is the better reason), then the upstream run.
    let recorded = match Manifest::read(dir) {
        Ok(Some(m)) => m.input_fingerprint,
        _ => String::new(),
    };
    match stage::up_to_date(dir, step.name(), &step.params, &recorded) {
        Err(why) if why != "inputs changed" => Decision::Run(why),
        _ => Decision::Run(format!(
            "after {} (if its output changes)",
            after.join(", ")
        )),
    }
}

/// Turns a TOML error into one line: `FILE:LINE: message`.
fn toml_error(path: &Path, source: &str, e: &toml::de::Error) -> Error {
    let start = e.span().map(|s| s.start.min(source.len())).unwrap_or(0);
    let mut line = source[..start].matches('\n').count() + 1;
    let mut msg = e.message().trim().replace('\n', " ");
    // toml spans an unknown key by its whole table: point at the key's own line.
    if let Some(key) = msg
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        let is_key = |l: &str| {
            let l = l.trim_start().trim_start_matches('[').trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', ']', '.']))
        };
        if let Some(offset) = source.lines().skip(line - 1).position(is_key) {
            line += offset;
        }
        msg.push_str(
            "; remove it or fix its spelling (`fewlabels STAGE --help` lists the parameters)",
        );
    }
    Error::usage(format!("{}:{line}: {msg}", path.display()))
}

pub fn main(cli: Cli) -> Result<()> {
    let overrides: Vec<Override> = cli
        .set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<_>>()?;
    let pipeline = Pipeline::load(&cli.pipeline, cli.run_dir.as_deref(), &overrides, cli.plan)?;
    crate::device::set_threads(pipeline.exec.threads);
    let mut steps: Vec<&Step> = pipeline.steps.iter().collect();
    if let Some(until) = &cli.until {
        let pos = steps
            .iter()
            .position(|s| s.name().as_str() == until)
            .ok_or_else(|| {
                Error::usage(format!(
                    "--until {until}: the pipeline has no such stage (it has {})",
                    names(&pipeline.steps)
                ))
            })?;
        steps.truncate(pos + 1);
    }
    if cli.plan {
        print_plan(&pipeline, &steps);
        // The plan is shown whole; a missing input still makes it a bad
        // pipeline (exit 2), named as a run would name it.
        return pipeline
            .check_paths()
            .map_err(|e| Error::usage(e.to_string()));
    }
    let _lock = lock_dir(&pipeline.run_dir, "run directory")?;
    progress::note(format!(
        "pipeline {} -> {}",
        pipeline.path.display(),
        pipeline.run_dir.display()
    ));
    for o in &pipeline.overrides {
        progress::note(format!("  --set {}", o.text));
    }
    let mut ran = Vec::new();
    for step in &steps {
        let (_, outcome) = step
            .stage
            .execute(&step.dirs, &step.params, &pipeline.exec)?;
        ran.push(outcome);
    }
    if ran.iter().all(|o| *o == Outcome::UpToDate) {
        progress::note("every stage is up to date; nothing to do");
    }
    let title = match &pipeline.header.name {
        Some(name) => format!("fewlabels run: {name}"),
        None => format!("fewlabels run: {}", pipeline.path.display()),
    };
    let (html, _) = crate::report::write_report(&pipeline.run_dir, &title)?;
    progress::note(format!("report: {}", html.display()));
    Ok(())
}

fn names(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| s.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_plan(pipeline: &Pipeline, steps: &[&Step]) {
    let decisions = plan(steps);
    if progress::is_json() {
        let rows: Vec<_> = steps
            .iter()
            .zip(&decisions)
            .map(|(s, d)| serde_json::json!({"stage": s.name(), "dir": s.dirs.output, "params": s.params, "decision": d}))
            .collect();
        let sets: Vec<&str> = pipeline.overrides.iter().map(|o| o.text.as_str()).collect();
        println!(
            "{}",
            serde_json::json!({"pipeline": pipeline.path, "run_dir": pipeline.run_dir, "set": sets, "stages": rows})
        );
        return;
    }
    println!(
        "pipeline {} (run dir {})",
        pipeline.path.display(),
        pipeline.run_dir.display()
    );
    for o in &pipeline.overrides {
        println!("  --set {}", o.text);
    }
    for (s, d) in steps.iter().zip(&decisions) {
        let what = match d {
            Decision::UpToDate => "up to date".to_string(),
            Decision::Run(why) => format!("will run: {why}"),
        };
        println!(
            "  {:<14} -> {:<28} {what}",
            s.name().as_str(),
            s.dirs.output.display()
        );
        println!("  {:<14}    params {}", "", s.params);
    }
}
