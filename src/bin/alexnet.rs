//! `alexnet`: the command-line front of alexnet_rs (the program itself is `alexnet_rs::cli`).
fn main() -> std::process::ExitCode {
    alexnet_rs::cli::main(std::env::args_os())
}
