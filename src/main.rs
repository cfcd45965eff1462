use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    match waymark::cli::run(waymark::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waymark: {}", waymark::cli::describe(&e));
            ExitCode::FAILURE
        }
    }
}
