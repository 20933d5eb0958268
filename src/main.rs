use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = wick::cli::Cli::parse();
    let (threads, warning) = wick::cli::threads(cli.threads);
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    // candle and wick's kernels size their CPU thread pools from these variables when they first
    // need them.
    // SAFETY: no other thread exists yet (the async runtime is built below).
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(wick::cli::run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
