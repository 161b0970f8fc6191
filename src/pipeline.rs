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
//! the folders between stages are fixed names inside the run directory.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::progress::{self, Outcome};
use crate::stage::{self, Input};
use crate::stages::shard::LabelSource;
use crate::stages::train_gan::LabelsNeeded;
use crate::stages::{
    embed, evaluate, prepare, pretrain, pseudo_label, sample_labels, shard, train_gan, Exec,
};

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

/// A whole pipeline file. Absent tables are stages that do not run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipelineFile {
    #[serde(default)]
    pub pipeline: Header,
    pub prepare: Option<prepare::Params>,
    pub sample_labels: Option<sample_labels::Params>,
    pub pretrain: Option<pretrain::Params>,
    pub embed: Option<embed::Params>,
    pub pseudo_label: Option<pseudo_label::Params>,
    pub shard: Option<shard::Params>,
    pub train_gan: Option<train_gan::Params>,
    pub evaluate: Option<evaluate::Params>,
    /// Execution options for every stage (threads, device); never change outputs.
    #[serde(default)]
    pub exec: Exec,
}

/// The stages in run order: (table name, folder in the run directory).
pub const STAGES: [(&str, &str); 8] = [
    ("prepare", "images"),
    ("sample-labels", "labels"),
    ("pretrain", "pretrain"),
    ("embed", "features"),
    ("pseudo-label", "pseudo_labels"),
    ("shard", "train"),
    ("train-gan", "gan"),
    ("evaluate", "eval"),
];

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
}

/// A parsed pipeline with its source, for error messages with line numbers.
pub struct Pipeline {
    pub path: PathBuf,
    pub source: String,
    pub file: PipelineFile,
    pub run_dir: PathBuf,
}

impl Pipeline {
    /// Reads and checks a pipeline file. With `paths_aside` (for `--plan`), a
    /// missing input path is not an error: the plan says so instead.
    pub fn load(path: &Path, run_dir: Option<&Path>, paths_aside: bool) -> Result<Pipeline> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read pipeline file: {e}")))?;
        let file: PipelineFile =
            toml::from_str(&source).map_err(|e| toml_error(path, &source, &e))?;
        let run_dir = match (run_dir, &file.pipeline.run_dir) {
            (Some(d), _) => d.to_path_buf(),
            (None, Some(d)) => d.clone(),
            (None, None) => PathBuf::from("runs").join(path.file_stem().unwrap_or_default()),
        };
        let p = Pipeline {
            path: path.to_path_buf(),
            source,
            file,
            run_dir,
        };
        p.validate(paths_aside)?;
        Ok(p)
    }

    /// The folder of a stage in the run directory.
    pub fn dir(&self, stage: &str) -> PathBuf {
        let folder = STAGES
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, d)| *d)
            .expect("known stage");
        self.run_dir.join(folder)
    }

    fn has(&self, stage: &str) -> bool {
        let f = &self.file;
        match stage {
            "prepare" => f.prepare.is_some(),
            "sample-labels" => f.sample_labels.is_some(),
            "pretrain" => f.pretrain.is_some(),
            "embed" => f.embed.is_some(),
            "pseudo-label" => f.pseudo_label.is_some(),
            "shard" => f.shard.is_some(),
            "train-gan" => f.train_gan.is_some(),
            "evaluate" => f.evaluate.is_some(),
            _ => false,
        }
    }

    /// The line of a table's header, for messages.
    fn line_of(&self, table: &str) -> usize {
        let header = format!("[{table}]");
        self.source
            .lines()
            .position(|l| l.trim_start().starts_with(&header))
            .map(|i| i + 1)
            .unwrap_or(1)
    }

    /// An upstream stage folder: present when the pipeline runs that stage or
    /// an earlier run left it finished; otherwise an error naming the fix.
    fn need(&self, table: &str, upstream: &str) -> Result<PathBuf> {
        let dir = self.dir(upstream);
        if self.has(upstream)
            || Manifest::read(&dir)
                .ok()
                .flatten()
                .is_some_and(|m| m.complete)
        {
            return Ok(dir);
        }
        Err(Error::invalid(format!(
            "{}:{}: [{table}] needs the output of [{upstream}] ({}); add a [{upstream}] table",
            self.path.display(),
            self.line_of(table),
            dir.display()
        )))
    }

    fn optional(&self, upstream: &str) -> Option<PathBuf> {
        let dir = self.dir(upstream);
        (self.has(upstream)
            || Manifest::read(&dir)
                .ok()
                .flatten()
                .is_some_and(|m| m.complete))
        .then_some(dir)
    }

    /// Where the training shards' labels come from, following the GAN mode.
    fn label_source_dir(&self) -> Result<(Option<PathBuf>, LabelsNeeded)> {
        let needed = match &self.file.train_gan {
            Some(p) => p.mode.labels_needed(),
            None if self.has("pseudo-label") => LabelsNeeded::PseudoLabels,
            None if self.has("sample-labels") => LabelsNeeded::Subset,
            None => LabelsNeeded::True,
        };
        let dir = match needed {
            LabelsNeeded::PseudoLabels => Some(self.need("shard", "pseudo-label")?),
            LabelsNeeded::Subset => Some(self.need("shard", "sample-labels")?),
            LabelsNeeded::True => None,
        };
        Ok((dir, needed))
    }

    /// Checks that every stage's inputs come from somewhere.
    fn validate(&self, paths_aside: bool) -> Result<()> {
        if self.has("sample-labels") {
            self.need("sample-labels", "prepare")?;
        }
        if self.has("pretrain") {
            self.need("pretrain", "prepare")?;
        }
        if self.has("embed") {
            self.need("embed", "prepare")?;
        }
        if self.has("pseudo-label") {
            self.need("pseudo-label", "embed")?;
        }
        if self.has("shard") {
            self.need("shard", "prepare")?;
            self.label_source_dir()?;
        }
        if self.has("train-gan") {
            self.need("train-gan", "shard")?;
        }
        if self.has("evaluate") {
            self.need("evaluate", "train-gan")?;
            self.need("evaluate", "prepare")?;
        }
        if let Some(p) = &self.file.prepare {
            if !p.input.exists() && !paths_aside {
                return Err(Error::invalid(format!(
                    "{}:{}: [prepare] input `{}` does not exist; fix the path (or run `make setup` for the demo data)",
                    self.path.display(),
                    self.line_of("prepare"),
                    p.input.display()
                )));
            }
        }
        if let Some(list) = self
            .file
            .sample_labels
            .as_ref()
            .and_then(|p| p.from.as_ref())
        {
            if !list.exists() && !paths_aside {
                return Err(Error::invalid(format!(
                    "{}:{}: [sample-labels] from `{}` does not exist; fix the path to your CSV or Parquet list of labelled images",
                    self.path.display(),
                    self.line_of("sample-labels"),
                    list.display()
                )));
            }
        }
        Ok(())
    }

    /// The stages this pipeline runs, in order, each with its parameters as
    /// the stage records them and the inputs it fingerprints.
    pub fn steps(&self) -> Result<Vec<Step>> {
        let f = &self.file;
        let mut steps = Vec::new();
        let images = self.dir("prepare");
        let mut push = |name: &'static str, params: serde_json::Value, inputs: Vec<Input>| {
            let dir = self.dir(name);
            steps.push(Step {
                name,
                dir,
                params,
                inputs,
            });
        };
        let json = |v: &dyn erased::Ser| v.to_json();
        if let Some(p) = &f.prepare {
            push("prepare", json(p), prepare::inputs(p));
        }
        if let Some(p) = &f.sample_labels {
            push("sample-labels", json(p), sample_labels::inputs(&images, p));
        }
        let labels = self.optional("sample-labels");
        if let Some(p) = &f.pretrain {
            push(
                "pretrain",
                json(p),
                pretrain::inputs(&images, labels.as_deref()),
            );
        }
        let model = self.optional("pretrain");
        if let Some(p) = &f.embed {
            push("embed", json(p), embed::inputs(&images, model.as_deref()));
        }
        if let Some(p) = &f.pseudo_label {
            push(
                "pseudo-label",
                json(p),
                pseudo_label::inputs(&self.dir("embed"), labels.as_deref(), &images),
            );
        }
        if let Some(p) = &f.shard {
            let (dir, needed) = self.label_source_dir()?;
            let source = label_source(dir.as_deref(), needed);
            push("shard", json(p), shard::inputs(&images, source));
        }
        if let Some(p) = &f.train_gan {
            push("train-gan", json(p), train_gan::inputs(&self.dir("shard")));
        }
        if let Some(p) = &f.evaluate {
            push(
                "evaluate",
                json(p),
                evaluate::inputs(&self.dir("train-gan"), &images),
            );
        }
        Ok(steps)
    }

    /// Runs one stage by name.
    fn run_stage(&self, name: &str) -> Result<(Manifest, Outcome)> {
        let f = &self.file;
        let exec = &f.exec;
        let images = self.dir("prepare");
        let labels = self.optional("sample-labels");
        let out = self.dir(name);
        match name {
            "prepare" => prepare::run(&out, f.prepare.as_ref().expect("has prepare"), exec),
            "sample-labels" => {
                sample_labels::run(&images, &out, f.sample_labels.as_ref().expect("has"), exec)
            }
            "pretrain" => pretrain::run(
                &images,
                labels.as_deref(),
                &out,
                f.pretrain.as_ref().expect("has"),
                exec,
            ),
            "embed" => embed::run(
                &images,
                self.optional("pretrain").as_deref(),
                &out,
                f.embed.as_ref().expect("has"),
                exec,
            ),
            "pseudo-label" => pseudo_label::run(
                &self.dir("embed"),
                labels.as_deref(),
                &images,
                &out,
                f.pseudo_label.as_ref().expect("has"),
                exec,
            ),
            "shard" => {
                let (dir, needed) = self.label_source_dir()?;
                shard::run(
                    &images,
                    label_source(dir.as_deref(), needed),
                    &out,
                    f.shard.as_ref().expect("has"),
                    exec,
                )
            }
            "train-gan" => train_gan::run(
                &self.dir("shard"),
                &out,
                f.train_gan.as_ref().expect("has"),
                exec,
            ),
            "evaluate" => evaluate::run(
                &self.dir("train-gan"),
                &images,
                &out,
                f.evaluate.as_ref().expect("has"),
                exec,
            ),
            other => Err(Error::invalid(format!("unknown stage `{other}`"))),
        }
    }
}

fn label_source(dir: Option<&Path>, needed: LabelsNeeded) -> LabelSource<'_> {
    match (dir, needed) {
        (Some(d), LabelsNeeded::PseudoLabels) => LabelSource::PseudoLabels(d),
        (Some(d), LabelsNeeded::Subset) => LabelSource::Labels(d),
        _ => LabelSource::TrueLabels,
    }
}

/// Serialising the different `Params` types through one function.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("parameters serialise")
        }
    }
}

/// One stage of a pipeline, as planned.
pub struct Step {
    pub name: &'static str,
    pub dir: PathBuf,
    pub params: serde_json::Value,
    pub inputs: Vec<Input>,
}

/// Why a stage would run, or that it would not.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "kebab-case")]
pub enum Decision {
    UpToDate,
    Run(String),
}

/// Decides each step's fate without running anything.
pub fn plan(steps: &[Step]) -> Vec<Decision> {
    let mut decisions = Vec::new();
    let mut upstream_runs: Vec<&str> = Vec::new();
    for step in steps {
        let d = decide(step, &upstream_runs);
        if matches!(d, Decision::Run(_)) {
            upstream_runs.push(step.name);
        }
        decisions.push(d);
    }
    decisions
}

fn decide(step: &Step, upstream_runs: &[&str]) -> Decision {
    let manifest = match Manifest::read(&step.dir) {
        Ok(Some(m)) if m.complete => m,
        Ok(Some(_)) => return Decision::Run("an earlier run did not finish; it resumes".into()),
        Ok(None) => return Decision::Run("not run yet".into()),
        Err(e) => return Decision::Run(format!("unreadable manifest ({e})")),
    };
    if manifest.tool_version != stage::TOOL_VERSION {
        return Decision::Run(format!("made by fewlabels {}", manifest.tool_version));
    }
    if manifest.params != step.params {
        return Decision::Run(format!(
            "parameters changed: {}",
            diff_params(&manifest.params, &step.params)
        ));
    }
    // Inputs are fingerprinted after their own stage ran; an upstream re-run may or may not change them.
    let upstream: Vec<&str> = step
        .inputs
        .iter()
        .filter_map(|i| match i {
            Input::Stage { stage, .. } => upstream_runs.iter().find(|u| *u == stage).copied(),
            Input::Path(_) => None,
        })
        .collect();
    if !upstream.is_empty() {
        return Decision::Run(format!(
            "after {} (if its output changes)",
            upstream.join(", ")
        ));
    }
    match stage::fingerprint(&step.inputs) {
        Ok(fp) if fp == manifest.input_fingerprint => Decision::UpToDate,
        Ok(_) => Decision::Run("inputs changed".into()),
        Err(e) => Decision::Run(format!("inputs not ready ({e})")),
    }
}

fn diff_params(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return "all".into();
    };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let changed: Vec<String> = keys
        .into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| {
                v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
            };
            format!("{k} {} -> {}", show(o.get(k)), show(n.get(k)))
        })
        .collect();
    changed.join(", ")
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
    Error::invalid(format!("{}:{line}: {msg}", path.display()))
}

pub fn main(cli: Cli) -> Result<()> {
    let pipeline = Pipeline::load(&cli.pipeline, cli.run_dir.as_deref(), cli.plan)?;
    crate::device::set_threads(pipeline.file.exec.threads);
    let mut steps = pipeline.steps()?;
    if let Some(until) = &cli.until {
        let pos = steps.iter().position(|s| s.name == until).ok_or_else(|| {
            Error::invalid(format!(
                "--until {until}: the pipeline has no such stage (it has {})",
                names(&steps)
            ))
        })?;
        steps.truncate(pos + 1);
    }
    if cli.plan {
        print_plan(&pipeline, &steps);
        return Ok(());
    }
    progress::note(format!(
        "pipeline {} -> {}",
        pipeline.path.display(),
        pipeline.run_dir.display()
    ));
    let mut ran = Vec::new();
    for step in &steps {
        let (_, outcome) = pipeline.run_stage(step.name)?;
        ran.push((step.name, outcome));
    }
    if ran.iter().all(|(_, o)| *o == Outcome::UpToDate) {
        progress::note("every stage is up to date; nothing to do");
    }
    let title = match &pipeline.file.pipeline.name {
        Some(name) => format!("fewlabels run: {name}"),
        None => format!("fewlabels run: {}", pipeline.path.display()),
    };
    let (html, _) = crate::report::write_report(&pipeline.run_dir, &title, &STAGES)?;
    progress::note(format!("report: {}", html.display()));
    Ok(())
}

fn names(steps: &[Step]) -> String {
    steps.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

fn print_plan(pipeline: &Pipeline, steps: &[Step]) {
    let decisions = plan(steps);
    if progress::is_json() {
        let rows: Vec<_> = steps
            .iter()
            .zip(&decisions)
            .map(|(s, d)| serde_json::json!({"stage": s.name, "dir": s.dir, "params": s.params, "decision": d}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"pipeline": pipeline.path, "run_dir": pipeline.run_dir, "stages": rows})
        );
        return;
    }
    println!(
        "pipeline {} (run dir {})",
        pipeline.path.display(),
        pipeline.run_dir.display()
    );
    for (s, d) in steps.iter().zip(&decisions) {
        let what = match d {
            Decision::UpToDate => "up to date".to_string(),
            Decision::Run(why) => format!("will run: {why}"),
        };
        println!("  {:<14} -> {:<28} {what}", s.name, s.dir.display());
        println!("  {:<14}    params {}", "", s.params);
    }
}
