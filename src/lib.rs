//! meshinit installs a service-mesh pod's traffic-capture rules: a drop-in replacement for
//! Istio's `istio-init` (`pilot-agent istio-iptables`).
//!
//! Data flows one way:
//!
//! ```text
//! argv + env ─▶ RawArgs ─▶ Config ─▶ Plan ─▶ rendered ─▶ observe ─▶ decide ─▶ execute ─▶ kernel
//!               (cli)      (config)  (plan)  (render)    (engine)   (engine)  (execute,
//!                                               │                     │        driver, sys)
//!                               --dry-run: print it      --check, --dry-run --cleanup-only:
//!                                                        report the decision, execute nothing
//! ```
//!
//! Everything up to `render` is pure, and so is `engine::decide`; `tests/layering.rs` checks
//! that imports only point down the layers (see docs/architecture-new.md).

pub mod cli;
pub mod cni;
pub mod config;
pub mod driver;
pub mod engine;
mod entry;
pub mod execute;
pub mod go_duration;
pub mod log;
pub mod plan;
pub mod render;
mod run;
pub mod sys;
pub mod trace;
pub mod validate;

pub use entry::run;
pub use run::exit_code;
