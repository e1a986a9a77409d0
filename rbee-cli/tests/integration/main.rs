//! rbee-cli's integration tests: the real `rbee` binary against real hosts.

mod deployments;
mod engines;
mod fleet;
mod queen;
mod queen_state;
mod sync_local;
mod sync_ssh;
mod upgrades;
mod workers;
