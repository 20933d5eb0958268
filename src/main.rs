use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = wick::cli::Cli::parse();
    if let Some(threads) = cli.threads {
        // candle sizes its CPU thread pools from these variables when it first needs them.
        // SAFETY: no other thread exists yet (the async runtime is built below).
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
            std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        }
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
