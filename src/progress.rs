//! Progress bars and end-of-stage summaries shared by every stage. Bars go to
//! stderr and are silent when stderr is not a terminal or with `--quiet`;
//! summaries are text on stderr, or one JSON object on stdout with `--json`.
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::manifest::Manifest;

static QUIET: AtomicBool = AtomicBool::new(false);
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets the output mode for the whole process (from `--quiet` / `--json`).
pub fn set_output_mode(quiet: bool, json: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
}

pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

fn visible() -> bool {
    !is_quiet() && std::io::stderr().is_terminal()
}

/// A bar over `len` items (images, steps) with rate and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix:>12}} [{{bar:30}}] {{human_pos}}/{{human_len}} {what} {{per_sec}} ETA {{eta}} {{msg}}"
        ))
        .expect("valid progress template")
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

/// A spinner for work of unknown length (listing a tar, scanning).
pub fn spinner(what: &str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix:>12}} {{spinner}} {{human_pos}} {what} {{per_sec}} {{msg}}"
        ))
        .expect("valid progress template"),
    );
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

/// Plain progress lines for a log file: under Slurm, Kubernetes or nohup
/// stderr is no terminal and the bars are hidden, so a days-long stage
/// would say nothing. `due` is true (on a non-terminal stderr, unless
/// quiet) at most every `FEWLABELS_LOG_SECONDS` seconds (default 60; 0:
/// every time it is asked).
pub struct LogLines {
    every: Duration,
    last: Option<std::time::Instant>,
    on: bool,
}

impl LogLines {
    pub fn new() -> LogLines {
        let every = std::env::var("FEWLABELS_LOG_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(60.0);
        LogLines {
            every: Duration::from_secs_f64(every),
            last: None,
            on: !is_quiet() && !std::io::stderr().is_terminal(),
        }
    }

    /// Whether to print a line now (`force`: the last step's, whatever the time).
    pub fn due(&mut self, force: bool) -> bool {
        if !self.on {
            return false;
        }
        let now = std::time::Instant::now();
        let due = force || self.last.is_none_or(|t| now - t >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

impl Default for LogLines {
    fn default() -> Self {
        Self::new()
    }
}

/// "3d 4h 05m", "2h 13m", "4m 09s", "17s": a duration for a log line.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".to_string();
    }
    let s = seconds.round() as u64;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h}h {m:02}m"),
    }
}

/// Prints a line of progress information to stderr unless quiet.
pub fn note(line: impl AsRef<str>) {
    if !is_quiet() {
        eprintln!("{}", line.as_ref());
    }
}

/// Whether a stage ran or was found up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ran,
    UpToDate,
}

/// Prints a stage's end-of-stage summary (text on stderr, or JSON on stdout).
pub fn print_summary(manifest: &Manifest, outcome: Outcome, dir: &std::path::Path) {
    if is_json() {
        let v = serde_json::json!({
            "stage": manifest.stage,
            "outcome": outcome,
            "dir": dir,
            "counts": manifest.counts,
            "seconds": manifest.timings.seconds,
            "outputs": manifest.outputs.len(),
        });
        println!("{v}");
        return;
    }
    if is_quiet() {
        return;
    }
    let status = match outcome {
        Outcome::Ran => format!("done in {:.1} s", manifest.timings.seconds),
        Outcome::UpToDate => "up to date (inputs and parameters unchanged)".to_string(),
    };
    eprintln!("{}: {status} -> {}", manifest.stage, dir.display());
    for (k, v) in &manifest.counts {
        let shown = match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                format!("{:.4}", n.as_f64().unwrap_or(f64::NAN))
            }
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if shown.len() <= 120 {
            eprintln!("  {k:<28} {shown}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(human_duration(17.2), "17s");
        assert_eq!(human_duration(249.0), "4m 09s");
        assert_eq!(human_duration(2.0 * 3600.0 + 13.0 * 60.0), "2h 13m");
        assert_eq!(
            human_duration(3.0 * 86_400.0 + 4.0 * 3600.0 + 5.0 * 60.0),
            "3d 4h 05m"
        );
        assert_eq!(human_duration(f64::NAN), "?");
    }
}
