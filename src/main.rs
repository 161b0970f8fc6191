//! The `fewlabels` command line. Parsing happens here; the work happens in
//! the library's stages. Exit status: 0 done, 1 failed (one line on stderr),
//! 2 bad usage.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fewlabels::{device, pipeline, progress, stages};

#[derive(Parser)]
#[command(
    name = "fewlabels",
    version,
    about = "Self-labelled image datasets and GANs trained with few labels"
)]
struct Cli {
    /// Print each stage's summary as one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars or summaries on stderr.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Images (folder, tar, list file, IDX) to 128x128 Arrow shards.
    Prepare(stages::prepare::Cli),
    /// Keep a fraction of the labels of each class.
    SampleLabels(stages::sample_labels::Cli),
    /// Train the rotation (+ linear head) feature extractor.
    Pretrain(stages::pretrain::Cli),
    /// One feature vector per image (raw pixels or a pretrained extractor).
    Embed(stages::embed::Cli),
    /// Label every image by k-means clusters or by the classifier head.
    PseudoLabel(stages::pseudo_label::Cli),
    /// Join images and labels into shuffled training shards.
    Shard(stages::shard::Cli),
    /// Train the BigGAN in one of the paper's labelling modes.
    TrainGan(stages::train_gan::Cli),
    /// Sample PNG images from a trained GAN's EMA generator.
    Generate(stages::train_gan::GenerateCli),
    /// Time the GAN's G and D steps on synthetic data (benches/gan/).
    BenchGan(stages::train_gan::BenchCli),
    /// Score a GAN (or any images table) with FID, KID and IS.
    Evaluate(stages::evaluate::Cli),
    /// Run a pipeline file's stages in order, skipping finished ones.
    Run(pipeline::Cli),
    /// Print the libtorch version, CUDA/cuDNN availability and thread counts.
    Doctor,
}

fn main() -> ExitCode {
    fewlabels::device::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    progress::set_output_mode(cli.quiet, cli.json);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEWLABELS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let result = match cli.command {
        Command::Prepare(c) => stages::prepare::main(c),
        Command::SampleLabels(c) => stages::sample_labels::main(c),
        Command::Pretrain(c) => stages::pretrain::main(c),
        Command::Embed(c) => stages::embed::main(c),
        Command::PseudoLabel(c) => stages::pseudo_label::main(c),
        Command::Shard(c) => stages::shard::main(c),
        Command::TrainGan(c) => stages::train_gan::main(c),
        Command::Generate(c) => stages::train_gan::generate_main(c),
        Command::BenchGan(c) => stages::train_gan::bench_main(c),
        Command::Evaluate(c) => stages::evaluate::main(c),
        Command::Run(c) => pipeline::main(c),
        Command::Doctor => {
            let d = device::doctor();
            if cli.json {
                println!("{}", serde_json::to_string(&d).expect("doctor serialises"));
            } else {
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
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
