//! The entry point: which of meshinit's programs this invocation is — the chained CNI
//! plugin (`CNI_COMMAND` set), the node installer (`cni-install`), or the init container's
//! command line — and hands over to it.

use crate::cli::{self, Command, Env};
use crate::config::detect::Host;
use crate::log::Log;
use crate::run::{execute, exit_code, inspect, print_stdout, Summary};

/// Runs meshinit with these arguments and environment; returns the exit code.
///
/// With `CNI_COMMAND` in the environment and no arguments (a CNI runtime passes none), meshinit
/// is a chained CNI plugin: [`crate::cni`] speaks the protocol on stdin and stdout.
pub fn run(argv: &[String], env: &Env, host: &dyn Host) -> u8 {
    if env.contains_key("CNI_COMMAND") && argv.len() <= 1 {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        return crate::cni::run(env, &mut stdin.lock(), &mut stdout.lock(), host);
    }
    if argv.get(1).map(String::as_str) == Some("cni-install") {
        return crate::cni::install_main(&argv[2..]);
    }
    if argv.get(1).map(String::as_str) == Some("cni-dry-run") && argv.len() == 2 {
        return crate::cni::pod::dry_run_main(env, host);
    }
    // Until the configuration is read, log as JSON if the flag is anywhere on the line.
    let log = Log {
        json: argv
            .iter()
            .any(|a| a == "--log_as_json" || a == "--log_as_json=true"),
        ..Log::default()
    };
    let raw = match cli::parse(argv, env) {
        Ok(Command::Run(raw)) => raw,
        Ok(Command::Explain(raw)) => return inspect(&raw, host, &log, None),
        Ok(Command::Trace { raw, conn, json }) => {
            return inspect(&raw, host, &log, Some((&conn, json)))
        }
        Ok(Command::Help) => return print_stdout(&cli::usage()),
        Ok(Command::Version) => {
            return print_stdout(&format!("meshinit {}\n", env!("CARGO_PKG_VERSION")))
        }
        Err(e) => {
            let mut summary = Summary::new();
            log.error(&cli::error_message(argv, &e));
            summary.outcome = "nothing changed: invalid command line".to_string();
            return summary.finish(&log, exit_code::INVALID_INPUT);
        }
    };
    execute(&raw, host, log, argv, env).code
}
