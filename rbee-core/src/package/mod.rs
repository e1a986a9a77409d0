//! The package manager's operations — sync, status, install, uninstall — as library calls.
//! The CLI runs them in-process; the queen runs the same calls.
//!
//! ```text
//! Config ─resolve─▶ Desired ─┐
//!        ─connect─▶ transports ─observe─▶ Actual ─┴─ plan ─▶ Plan ─(dry run: stop)─▶ execute ─▶ SyncReport
//! ```

mod error;
mod last_run;
mod run;
mod status;
mod sync;
mod uninstall;

pub use error::{PackageError, select};
pub use last_run::last_failed;
pub(crate) use last_run::save_last_run;
pub use rbee_proto::result::{DriftState, HiveStatusReport, OperationResult, StatusReport, SyncOutcome};
pub use run::{ConnectFn, RunContext, run_operation};
pub use status::{drift, status, status_with_lock};
pub use sync::{SyncRequest, sync};
pub use uninstall::uninstall;
