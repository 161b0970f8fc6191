//! The `fewlabels` command line. Parsing happens here; the work happens in
//! the library's stages. One subcommand per registered stage
//! (`stages::REGISTRY`), plus `run`, `generate`, `export`, `bench-gan` and `doctor`.
//! Exit status: 0 done, 1 failed (one line on stderr), 2 bad usage or a
//! parameter out of range.
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use fewlabels::stage::boundary;
use fewlabels::stages::{self, train_gan};
use fewlabels::{device, pipeline, progress, Error, Result};

fn cli() -> Command {
    let mut cmd = Command::new("fewlabels")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Self-labelled image datasets and GANs trained with few labels")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(
            Arg::new("json")
                .long("json")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Print each stage's summary as one JSON object on stdout."),
        )
        .arg(
            Arg::new("quiet")
                .long("quiet")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("No progress bars or summaries on stderr."),
        );
    for stage in stages::REGISTRY {
        cmd = cmd.subcommand(stage.command());
    }
    cmd.subcommand(negatives(
        train_gan::GenerateCli::augment_args(Command::new("generate"))
            .about("Sample PNG images from a trained GAN's EMA generator."),
    ))
    .subcommand(
        fewlabels::report::ReportCli::augment_args(Command::new("report")).about(
            "Write report.html and report.md of a run directory (however its stages were run).",
        ),
    )
    .subcommand(
        train_gan::ExportCli::augment_args(Command::new("export"))
            .about("Write a trained GAN's EMA generator as TorchScript (z, class -> images)."),
    )
    .subcommand(negatives(
        train_gan::BenchCli::augment_args(Command::new("bench-gan"))
            .about("Time the GAN's G and D steps on synthetic data (benches/gan/)."),
    ))
    .subcommand(
        pipeline::Cli::augment_args(Command::new("run"))
            .about("Run a pipeline file's stages in order, skipping finished ones."),
    )
    .subcommand(
        Command::new("doctor")
            .about("Print the libtorch version, CUDA/cuDNN availability and thread counts."),
    )
}

/// `--truncation -1` is a value to refuse with a reason, not an unknown flag.
fn negatives(cmd: Command) -> Command {
    cmd.mut_args(|a| {
        let values = a.get_action().takes_values();
        a.allow_negative_numbers(values)
    })
}

fn parsed<T: FromArgMatches>(m: &ArgMatches) -> Result<T> {
    T::from_arg_matches(m).map_err(|e| Error::usage(e.to_string()))
}

fn dispatch(name: &str, m: &ArgMatches, json: bool) -> Result<()> {
    if let Some(stage) = stages::REGISTRY.iter().find(|s| s.name().as_str() == name) {
        return stage.main(m);
    }
    if name != "doctor" {
        stages::join_launch(name, false, device::DeviceChoice::Cpu)?;
    }
    match name {
        "generate" => train_gan::generate_main(parsed(m)?),
        "export" => train_gan::export_main(parsed(m)?),
        "report" => fewlabels::report::report_main(parsed(m)?),
        "bench-gan" => train_gan::bench_main(parsed(m)?),
        "run" => pipeline::main(parsed(m)?),
        "doctor" => {
            doctor(json);
            Ok(())
        }
        other => Err(Error::usage(format!("unknown command `{other}`"))),
    }
}

fn doctor(json: bool) {
    let d = device::doctor();
    if json {
        println!("{}", serde_json::to_string(&d).expect("doctor serialises"));
        return;
    }
    println!("fewlabels        {}", d.fewlabels_version);
    println!("libtorch         {}", d.libtorch_version);
    if let Some(p) = &d.libtorch_path {
        println!("built against    {p}");
    }
    println!("CUDA available   {}", d.cuda_available);
    println!("cuDNN available  {}", d.cudnn_available);
    println!("CUDA devices     {}", d.cuda_device_count);
    println!("torch threads    {}", d.torch_threads);
    println!("rayon threads    {}", d.rayon_threads);
}

/// A clap usage error as one line, as every other error is: its message
/// and the values it lists (`[possible values: ...]`, the missing flags),
/// without the usage block and the `--help` hint.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    fewlabels::device::keep_freed_memory();
    let matches = match cli().try_get_matches() {
        Ok(m) => m,
        // A bare `fewlabels` (or a command without its subcommand): the
        // whole help, command list included, then exit 2.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprint!("{}", e.render());
            return ExitCode::from(2);
        }
        Err(e) if e.use_stderr() => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version: clap's own text on stdout.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let (json, quiet) = (matches.get_flag("json"), matches.get_flag("quiet"));
    progress::set_output_mode(quiet, json);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEWLABELS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let (name, sub) = matches.subcommand().expect("a subcommand is required");
    // Whatever fails, libtorch included, ends as one line: never a panic.
    match boundary::catch(|| dispatch(name, sub, json)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
