//! `apl`: parse the command line, set up logging, run the command. Nothing else lives here.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    apl_engine::device::pin_cpu_threads();
    let cli = apl::cli::Cli::parse();
    apl::cli::init_tracing();
    apl::cli::run(cli)
}
