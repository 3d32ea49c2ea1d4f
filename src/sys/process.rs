//! Running helper programs (the iptables tools): the one place meshinit starts processes,
//! behind a small trait so the decision logic can be tested with a recording fake.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// What a program printed and how it exited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
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

    /// How it ended: its exit code, or the signal that killed it.
    pub fn ended(&self) -> Ended {
        match (self.code, self.signal) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(signal)) => Ended::Killed(signal),
            (None, None) => Ended::Unknown,
        }
    }
}

/// How a program ended, for messages: `exited with code 1`, `was killed by signal 6
/// (SIGABRT)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
    /// Neither an exit code nor a signal was reported.
    Unknown,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ended::Exited(code) => write!(f, "exited with code {code}"),
            Ended::Killed(signal) => match Signal::try_from(signal) {
                Ok(name) => write!(f, "was killed by signal {signal} ({})", name.as_str()),
                Err(_) => write!(f, "was killed by signal {signal}"),
            },
            Ended::Unknown => f.write_str("ended without an exit code or signal"),
        }
    }
}

/// Why a program did not run to its end.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RunError {
    /// It is not on `PATH`.
    #[error("cannot run {program}: not installed (not found on PATH)")]
    NotInstalled {
        /// The program.
        program: String,
    },
    /// It could not be started for another reason.
    #[error("cannot run {program}: {error}")]
    Spawn {
        /// The program.
        program: String,
        /// The system's answer.
        #[source]
        error: Arc<io::Error>,
    },
    /// It was still running at the run's deadline (`--timeout`) and was killed, with
    /// everything it started.
    #[error(
        "{program} did not finish within {:.1}s and was killed at the run's deadline (--timeout {} from the start of the run)",
        ran.as_secs_f64(),
        crate::go_duration::go_duration(*timeout)
    )]
    Deadline {
        /// The program.
        program: String,
        /// How long it ran.
        ran: Duration,
        /// The run's `--timeout`.
        timeout: Duration,
    },
    /// Its exit status was lost (the thread waiting for it is gone).
    #[error("{program}: lost the child's exit status")]
    Lost {
        /// The program.
        program: String,
    },
}

impl RunError {
    /// A failure to start `program`: not installed when the system says it is not found.
    pub fn spawn(program: &str, error: io::Error) -> RunError {
        if error.kind() == io::ErrorKind::NotFound {
            RunError::NotInstalled {
                program: program.to_string(),
            }
        } else {
            RunError::Spawn {
                program: program.to_string(),
                error: Arc::new(error),
            }
        }
    }
}

/// Runs programs.
pub trait Runner {
    /// Runs `program` with `args` and these extra environment variables, feeding `stdin`. A
    /// program that cannot be started, or is killed at the deadline, is a [`RunError`].
    fn run(
        &self,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Result<Output, RunError>;

    /// Whether `program` can be started, without starting it.
    fn installed(&self, program: &str) -> bool;
}

/// How long a helper started after the run's deadline may take: enough for a rollback to be
/// written, still bounded if that tool hangs too.
pub const GRACE_AFTER_DEADLINE: Duration = Duration::from_secs(10);

/// Runs real processes, found on `PATH`, with meshinit's environment. Each one is bounded by
/// the run's deadline (`--timeout`): a helper still running then is killed (with everything
/// it started: it runs in a process group of its own) and reported by name and run time.
#[derive(Clone, Copy, Debug)]
pub struct SystemRunner {
    deadline: Option<Deadline>,
}

/// The run's deadline: `timeout` (`--timeout`) after the run `started`.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// When the run started.
    pub started: Instant,
    /// How long it may take.
    pub timeout: Duration,
}

impl SystemRunner {
    /// Helpers bounded by the run's deadline; `None` for no bound.
    pub fn new(deadline: Option<Deadline>) -> SystemRunner {
        SystemRunner { deadline }
    }

    /// How long a helper started now may run: until the deadline, or, when it has passed
    /// (the helper is a rollback after a timeout), [`GRACE_AFTER_DEADLINE`].
    fn limit(&self) -> Option<Duration> {
        self.deadline.map(|d| {
            let left = (d.started + d.timeout).saturating_duration_since(Instant::now());
            if left.is_zero() {
                GRACE_AFTER_DEADLINE
            } else {
                left
            }
        })
    }
}

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
    ) -> Result<Output, RunError> {
        let started = Instant::now();
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
            // Its own process group, so a timeout kills whatever it started as well.
            .process_group(0)
            .spawn()
            .map_err(|e| RunError::spawn(program, e))?;
        let pid = child.id();
        // Feed and drain at once: a tool that writes much before reading all of its input
        // (or reads all before writing) can never block on us.
        let feeder = match (stdin, child.stdin.take()) {
            (Some(text), Some(mut pipe)) => {
                let text = text.to_string();
                // A tool that exits early closes its stdin; its exit status tells why.
                Some(thread::spawn(move || {
                    let _ = pipe.write_all(text.as_bytes());
                }))
            }
            _ => None,
        };
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let (done, exited) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let _ = done.send(child.wait());
        });
        let lost = || RunError::Lost {
            program: program.to_string(),
        };
        let status = match self.limit() {
            Some(limit) => match exited.recv_timeout(limit) {
                Ok(status) => status,
                Err(_) => {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    let _ = exited.recv();
                    let _ = waiter.join();
                    return Err(RunError::Deadline {
                        program: program.to_string(),
                        ran: started.elapsed(),
                        timeout: self.deadline.map(|d| d.timeout).unwrap_or_default(),
                    });
                }
            },
            None => exited.recv().map_err(|_| lost())?,
        }
        .map_err(|e| RunError::Spawn {
            program: program.to_string(),
            error: Arc::new(e),
        })?;
        let _ = waiter.join();
        if let Some(feeder) = feeder {
            let _ = feeder.join();
        }
        Ok(Output {
            code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            stdout: String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned(),
        })
    }
}

/// Reads a pipe to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut out);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_and_drains_at_once_so_large_outputs_before_reading_do_not_deadlock() {
        let runner = SystemRunner::new(Some(Deadline {
            started: Instant::now(),
            timeout: Duration::from_secs(30),
        }));
        let input = "x".repeat(1 << 20);
        let out = runner
            .run(
                "sh",
                &["-c", "head -c 2000000 /dev/zero >&2; cat"],
                &[],
                Some(&input),
            )
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stderr.len(), 2_000_000);
        assert_eq!(out.stdout, input);
    }

    #[test]
    fn a_helper_still_running_at_the_deadline_is_killed_and_named() {
        let runner = SystemRunner::new(Some(Deadline {
            started: Instant::now(),
            timeout: Duration::from_millis(300),
        }));
        let started = Instant::now();
        // The shell's child keeps stdout open: it must die too, or draining would hang.
        let err = runner
            .run("sh", &["-c", "sleep 30; echo late"], &[], Some("input"))
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, RunError::Deadline { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("sh did not finish within 0.")
                && err
                    .to_string()
                    .contains("(--timeout 300ms from the start of the run)"),
            "{err}"
        );
        // After the deadline a helper (a rollback) still gets its grace period.
        let out = runner.run("true", &[], &[], None).unwrap();
        assert!(out.success());
        // The flag is named as it is given: Go's duration text, `2m0s` rather than `120s`.
        let Some(started) = Instant::now().checked_sub(Duration::from_millis(119_700)) else {
            return;
        };
        let runner = SystemRunner::new(Some(Deadline {
            started,
            timeout: Duration::from_secs(120),
        }));
        let err = runner.run("sleep", &["30"], &[], None).unwrap_err();
        assert!(
            err.to_string().starts_with("sleep did not finish within 0.")
                && err.to_string().ends_with(
                    " and was killed at the run's deadline (--timeout 2m0s from the start of the run)"
                ),
            "{err}"
        );
    }

    #[test]
    fn how_a_child_ended_is_said_by_its_exit_code_or_the_signal_that_killed_it() {
        let runner = SystemRunner::new(None);
        let out = runner.run("sh", &["-c", "exit 3"], &[], None).unwrap();
        assert_eq!(out.ended().to_string(), "exited with code 3");
        let out = runner
            .run("sh", &["-c", "kill -ABRT $$"], &[], None)
            .unwrap();
        assert_eq!((out.code, out.signal), (None, Some(6)));
        assert_eq!(out.ended().to_string(), "was killed by signal 6 (SIGABRT)");
        let odd = Output {
            signal: Some(99),
            ..Output::default()
        };
        assert_eq!(odd.ended().to_string(), "was killed by signal 99");
    }
}
