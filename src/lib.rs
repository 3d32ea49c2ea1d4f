//! meshinit installs a service-mesh pod's traffic-capture rules: a drop-in replacement for
//! Istio's `istio-init` (`pilot-agent istio-iptables`).
//!
//! Data flows one way:
//!
//! ```text
//! argv + env ─▶ RawArgs ─▶ Config ─▶ Plan ─▶ rendered ─▶ apply ─▶ kernel
//!               (cli)      (config,   (plan)   (backend)
//!                          detection)              │
//!                                     --dry-run: print it and stop
//! ```
//!
//! Everything left of apply is pure, so the conformance tests of the dry-run output cover
//! parsing, planning and rendering.

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
