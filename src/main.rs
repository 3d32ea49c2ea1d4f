//! The `meshinit` binary: collects argv and the environment, runs, exits with the run's code.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let code = meshinit::run(&argv, &env, &meshinit::config::detect::SystemHost);
    ExitCode::from(code)
}
