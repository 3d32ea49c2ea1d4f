//! Bounded retry of transient failures (`--retries`, `--retry-pause`, inside the run's
//! `--timeout`): which failures are transient — a lock held past its wait, the kernel
//! answering `EBUSY`, `EAGAIN` or `EINTR` — and the one loop that runs an apply or cleanup
//! again after one of them, logging each retry with its reason.
//!
//! A failure is marked transient where it is known (the restore tool's exit code and stderr,
//! a netlink errno, the namespace lock's `EADDRINUSE`) and carried up as
//! [`ApplyError::Transient`], which also means "nothing was left changed": a failure whose
//! undo did not succeed is `LeftChanged` and never retried.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::LogLevel;
use crate::engine::error::{ApplyError, Retry};
use crate::go_duration::go_duration;
use crate::log::Log;
use crate::sys::process::Deadline;

pub use crate::sys::transient::{transient_errno, transient_tool, Transient};

/// `--retries` and `--retry-pause`, with the run's deadline they live within.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// How many more attempts after the first (0: none, Istio's behaviour).
    pub retries: u32,
    /// The pause before each further attempt.
    pub pause: Duration,
    /// The run's deadline (`--timeout` from the start of the run): no attempt starts after it.
    pub deadline: Deadline,
}

impl Policy {
    /// How long until the deadline.
    fn left(&self) -> Duration {
        (self.deadline.started + self.deadline.timeout).saturating_duration_since(Instant::now())
    }
}

/// Runs `attempt` (an apply or a cleanup, which reads the namespace afresh and takes its locks
/// each time) until it succeeds, fails for a reason that is not transient, or the attempts or
/// the deadline run out. `attempt` is given the time left until the deadline, to bound its
/// lock waits by. Each retry is logged (warn) with its reason; the final error names the
/// attempts made, the last reason and, when it was the limit, the deadline.
pub fn with_retries<T>(
    policy: &Policy,
    log: &Log,
    mut attempt: impl FnMut(Duration) -> Result<T, ApplyError>,
) -> Result<T, ApplyError> {
    let attempts = policy.retries.saturating_add(1);
    let mut number = 1;
    let mut retried: Vec<Transient> = Vec::new();
    loop {
        let result = attempt(policy.left());
        let (error, reason) = match result {
            Ok(value) => {
                if number > 1 {
                    log.info(&format!(
                        "attempt {number} of {attempts} succeeded, after {} transient failure(s)",
                        number - 1
                    ));
                }
                return Ok(value);
            }
            Err(ApplyError::Transient { error, reason }) => (error, reason),
            // Not transient: never retried; after retries, the error says what came before.
            Err(e) if number == 1 => return Err(e),
            Err(e) => {
                return Err(ApplyError::Retried {
                    retry: Retry::Permanent {
                        number,
                        attempts,
                        last: retried.pop().expect("a transient failure came before"),
                    },
                    error: Box::new(e),
                });
            }
        };
        let transient =
            |retry: Retry, reason: Transient, error: Box<ApplyError>| ApplyError::Retried {
                retry,
                error: Box::new(ApplyError::Transient { error, reason }),
            };
        if policy.retries == 0 {
            return Err(transient(Retry::NotAsked, reason, error));
        }
        if number == attempts {
            let retry = Retry::Exhausted {
                attempts: number,
                retries: policy.retries,
                reason: reason.clone(),
            };
            return Err(transient(retry, reason, error));
        }
        let left = policy.left();
        if left <= policy.pause {
            let retry = Retry::Deadline {
                number,
                attempts,
                timeout: policy.deadline.timeout,
                left,
                pause: policy.pause,
                reason: reason.clone(),
            };
            return Err(transient(retry, reason, error));
        }
        let text = format!(
            "attempt {number} of {attempts} failed for a transient reason: {reason}; nothing was left changed; retrying in {} ({:.1}s left before the deadline, --timeout)",
            go_duration(policy.pause),
            left.as_secs_f64()
        );
        log.with_fields(
            LogLevel::Warn,
            &text,
            "retry",
            &json!({
                "attempt": number,
                "attempts": attempts,
                "reason": reason.to_string(),
                "pause_ms": policy.pause.as_millis() as u64,
                "deadline_left_ms": left.as_millis() as u64,
            }),
        );
        retried.push(reason);
        std::thread::sleep(policy.pause);
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::nf_tables::NftError;
    use crate::engine::error::{Failed, Kind, Precondition};
    use crate::sys::process::Output;
    use nix::errno::Errno;
    use std::cell::Cell;

    fn policy(retries: u32, pause_ms: u64, timeout_ms: u64) -> Policy {
        Policy {
            retries,
            pause: Duration::from_millis(pause_ms),
            deadline: Deadline {
                started: Instant::now(),
                timeout: Duration::from_millis(timeout_ms),
            },
        }
    }

    /// Attempt `n`'s failure, transient for [`reason`]`(n)`.
    fn transient(n: u32) -> ApplyError {
        ApplyError::Transient {
            error: Box::new(failure(n)),
            reason: reason(n),
        }
    }

    fn failure(n: u32) -> ApplyError {
        ApplyError::Precondition(Precondition::Ipv6Unreadable(format!("failure {n}")))
    }

    fn reason(n: u32) -> Transient {
        Transient::XtablesLock {
            program: format!("tool{n}"),
            said: format!("reason {n}"),
        }
    }

    fn quiet() -> Log {
        Log {
            level: LogLevel::None,
            json: false,
        }
    }

    #[test]
    fn only_ebusy_eagain_and_eintr_are_transient_errnos() {
        for errno in [Errno::EBUSY, Errno::EAGAIN, Errno::EINTR] {
            let reason = transient_errno(errno).expect("transient").to_string();
            assert!(reason.contains(errno.desc()), "{reason}");
        }
        for errno in [
            Errno::EPERM,
            Errno::EACCES,
            Errno::ENOENT,
            Errno::EOPNOTSUPP,
            Errno::EINVAL,
            Errno::EEXIST,
            Errno::ENOBUFS,
            Errno::EAFNOSUPPORT,
            Errno::EPROTONOSUPPORT,
        ] {
            assert_eq!(transient_errno(errno), None, "{errno}");
        }
    }

    #[test]
    fn netlink_errors_carry_their_errno_to_the_classifier() {
        use crate::driver::nf_tables::NftError;
        use crate::driver::rtnetlink::NetlinkError;
        let rejected = |errno| NftError::Rejected {
            origin: "rule 1 of istio-proxy-nat/istio-output".into(),
            errno,
            kernel: None,
            others: 0,
        };
        assert_eq!(
            rejected(Errno::EBUSY).transient(),
            Some(Transient::Errno(Errno::EBUSY))
        );
        assert!(rejected(Errno::EAGAIN).transient().is_some());
        assert_eq!(rejected(Errno::EOPNOTSUPP).transient(), None);
        let io = |errno| NftError::Io {
            op: "listing tables".into(),
            errno,
        };
        assert!(io(Errno::EINTR)
            .transient()
            .unwrap()
            .to_string()
            .contains("EINTR"));
        assert_eq!(io(Errno::EPERM).transient(), None);
        // Already retried once inside the batch code: another writer keeps creating it.
        assert_eq!(NftError::Raced { table: "t".into() }.transient(), None);
        let route = |errno| NetlinkError::Rejected {
            op: "adding rule fwmark 1337 lookup 133 (IPv4)".into(),
            errno,
        };
        assert!(route(Errno::EBUSY)
            .errno()
            .and_then(transient_errno)
            .is_some());
        assert_eq!(route(Errno::ENOENT).errno().and_then(transient_errno), None);
    }

    fn out(code: i32, stderr: &str) -> Output {
        Output {
            code: Some(code),
            signal: None,
            stdout: String::new(),
            stderr: stderr.to_string(),
        }
    }

    #[test]
    fn restore_failures_are_transient_only_for_the_lock_and_the_kernels_not_now() {
        // iptables 1.8.9's exact text when the lock stays held (measured).
        let lock = out(
            4,
            "Can't lock /run/xtables.lock: Resource temporarily unavailable\nAnother app is currently holding the xtables lock. Stopped waiting after 1s.\n",
        );
        let reason = transient_tool("iptables-legacy-restore", &lock)
            .expect("transient")
            .to_string();
        assert!(
            reason.contains("xtables lock") && reason.contains("Stopped waiting after 1s."),
            "{reason}"
        );
        let busy = out(
            4,
            "iptables-restore v1.8.9 (nf_tables): line 3: RULE_APPEND failed (Device or resource busy): rule in chain OUTPUT\n",
        );
        assert!(transient_tool("iptables-nft-restore", &busy)
            .unwrap()
            .to_string()
            .contains("EBUSY"));
        for permanent in [
            out(2, "iptables-restore v1.8.9 (legacy): Couldn't load target `TPROXY':No such file or directory\n"),
            out(1, "iptables-restore: line 2 failed\n"),
            out(4, "iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n"),
            out(4, "Fatal: can't open lock file /run/xtables.lock: Read-only file system\n"),
            // `-X` of a chain another rule jumps to (measured with 1.8.9): in use, not busy.
            out(4, "iptables-nft-restore v1.8.9 (nf_tables): \nline 2: CHAIN_DEL failed (Device or resource busy): chain FOO\n"),
            out(1, "iptables-restore v1.8.9 (nf_tables): line 2: RULE_APPEND failed (Operation not supported): rule in chain OUTPUT\n"),
        ] {
            assert_eq!(
                transient_tool("iptables-restore", &permanent),
                None,
                "{}",
                permanent.stderr
            );
        }
    }

    #[test]
    fn a_transient_failure_is_retried_until_it_passes_and_each_retry_is_counted() {
        let calls = Cell::new(0);
        let got = with_retries(&policy(3, 10, 10_000), &quiet(), |_| {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(transient(calls.get()))
            } else {
                Ok("done")
            }
        });
        assert_eq!(got.unwrap(), "done");
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn what_is_not_transient_is_never_retried() {
        let calls = Cell::new(0);
        let got: Result<(), _> = with_retries(&policy(5, 10, 10_000), &quiet(), |_| {
            calls.set(calls.get() + 1);
            Err(failure(1))
        });
        assert_eq!(calls.get(), 1);
        assert!(matches!(got, Err(ApplyError::Precondition(_))));
        // Left changed after a retry: still left changed, and says what came before.
        let calls = Cell::new(0);
        let got: Result<(), _> = with_retries(&policy(5, 10, 10_000), &quiet(), |_| {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                Err(transient(1))
            } else {
                Err(ApplyError::Failed(Failed::Nft(NftError::Raced {
                    table: "t".into(),
                })))
            }
        });
        assert_eq!(calls.get(), 2);
        let Err(error) = got else {
            panic!("{got:?}");
        };
        assert_eq!(error.kind(), Kind::Failed);
        assert_eq!(error.transient(), None);
        let m = error.to_string();
        assert!(
            m.starts_with(&format!("attempt 2 of 6 failed for a reason that is not transient, after 1 transient failure(s) (the last: {})", reason(1)))
                && m.ends_with("the batch was refused as a whole each time"),
            "{m}"
        );
    }

    #[test]
    fn attempts_run_out_and_the_error_names_them_and_the_last_reason() {
        let calls = Cell::new(0);
        let got: Result<(), _> = with_retries(&policy(2, 10, 10_000), &quiet(), |_| {
            calls.set(calls.get() + 1);
            Err(transient(calls.get()))
        });
        assert_eq!(calls.get(), 3);
        let Err(error) = got else {
            panic!("{got:?}");
        };
        assert_eq!(error.kind(), Kind::Transient);
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("gave up after 3 attempts (--retries 2), each failed for a transient reason; the last because {}:\n{}", reason(3), failure(3))),
            "{message}"
        );
    }

    #[test]
    fn no_attempt_is_started_when_the_deadline_falls_within_the_pause() {
        let calls = Cell::new(0);
        let started = Instant::now();
        let got: Result<(), _> = with_retries(&policy(10, 400, 1_000), &quiet(), |left| {
            assert!(left <= Duration::from_millis(1_000));
            calls.set(calls.get() + 1);
            Err(transient(calls.get()))
        });
        // Attempts at about 0, 400 and 800 ms; then the deadline is 200 ms away.
        assert_eq!(calls.get(), 3);
        assert!(started.elapsed() < Duration::from_millis(1_000));
        let Err(error) = got else {
            panic!("{got:?}");
        };
        assert_eq!(error.kind(), Kind::Transient);
        let message = error.to_string();
        assert!(
            message.starts_with("gave up after 3 of 11 attempts: the run's deadline (--timeout 1s from the start of the run) is 0.")
                && message.contains(&format!("(--retry-pause 400ms); the last attempt failed because {}:\n{}", reason(3), failure(3))),
            "{message}"
        );
    }

    #[test]
    fn durations_are_named_as_the_flags_take_them() {
        // Go's duration text (`2m0s`, `2m10s`), not seconds (`120s`).
        let got: Result<(), _> = with_retries(&policy(1, 130_000, 120_000), &quiet(), |_| {
            Err(transient(1))
        });
        let Err(error) = got else {
            panic!("{got:?}");
        };
        assert_eq!(error.kind(), Kind::Transient);
        let message = error.to_string();
        assert!(
            message.starts_with("gave up after 1 of 2 attempts: the run's deadline (--timeout 2m0s from the start of the run) is ")
                && message.contains(&format!("(--retry-pause 2m10s); the last attempt failed because {}", reason(1))),
            "{message}"
        );
    }

    #[test]
    fn without_retries_a_transient_failure_fails_at_once_saying_it_may_pass() {
        let calls = Cell::new(0);
        let got: Result<(), _> = with_retries(&policy(0, 10, 10_000), &quiet(), |_| {
            calls.set(calls.get() + 1);
            Err(transient(1))
        });
        assert_eq!(calls.get(), 1);
        let Err(error) = got else {
            panic!("{got:?}");
        };
        assert_eq!(error.kind(), Kind::Transient);
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{}\n(this may pass", failure(1))),
            "{message}"
        );
    }
}
