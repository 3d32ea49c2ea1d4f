//! The decision, kept apart from its effects: the run's [`mode::Mode`], the one read of the
//! namespace ([`observe`]), and the pure function from plan, observation and mode to the
//! steps to take or the differences to report ([`decide`]). The executor runs the steps.

pub mod decide;
pub mod error;
pub mod inventory;
pub mod mode;
pub mod observe;

#[cfg(test)]
mod tests;
