use clap::Parser;

fn main() -> std::process::ExitCode {
    rbee_cli::main_impl(rbee_cli::Cli::parse())
}
