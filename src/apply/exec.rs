//! Running helper programs (the iptables tools): the one place meshinit starts processes,
//! behind a small trait so the decision logic can be tested with a recording fake.

use std::io::{self, Write};
use std::process::{Command, Stdio};

/// What a program printed and how it exited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Output {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs programs.
pub trait Runner {
    /// Runs `program` with `args` and these extra environment variables, feeding `stdin`. A
    /// program that cannot be started is an `io::Error` (`NotFound` when it is not installed).
    fn run(
        &self,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> io::Result<Output>;

    /// Whether `program` can be started, without starting it.
    fn installed(&self, program: &str) -> bool;
}

/// Runs real processes, found on `PATH`, with meshinit's environment.
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn installed(&self, program: &str) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| {
                std::fs::metadata(dir.join(program))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> io::Result<Output> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that exits early closes its stdin; its exit status tells why.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output()?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
