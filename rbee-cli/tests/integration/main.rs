//! rbee-cli's integration tests: the real `rbee` binary against real hosts.

mod completions;
mod deployments;
mod engines;
mod fleet;
mod logs;
mod metrics;
mod queen;
mod queen_state;
mod secrets;
mod sync_local;
mod sync_ssh;
mod trust;
mod upgrades;
mod workers;
