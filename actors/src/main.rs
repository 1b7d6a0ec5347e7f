//! The `colony` binary: the example app's services handed to colony's command line.
//! Run `colony --help`, or `make run` to start `configs/single.yaml`.

use std::process::ExitCode;

fn main() -> ExitCode {
    colony::cli::main(actors::app())
}
