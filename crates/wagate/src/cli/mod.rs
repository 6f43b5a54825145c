//! `wagate <command>`.

mod logging;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wagate", version, about = "WhatsApp linked-device gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground (logs to stderr and the log file; stops on SIGTERM/SIGINT).
    Serve(serve::ServeArgs),
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
    }
}
