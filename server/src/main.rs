//! `apl`: parse the command line, set up logging, run the command. Nothing else lives here.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    apl::device::pin_cpu_threads();
    let cli = apl::cli::Cli::parse();
    apl::cli::init_tracing();
    apl::cli::run(cli)
}
