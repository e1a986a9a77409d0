//! # rbee-core
//!
//! The library behind `rbee sync`: one pipeline, each stage a plain function or trait.
//!
//! ```text
//! hives.conf + rbee.conf ──config::load_dir / config::parse──▶ Config
//! Config + ArtifactSource ──artifact::resolve──▶ Desired   (every artifact pinned: version + sha256)
//! each host ──fleet::observe_fleet (1 round trip per host over a Transport)──▶ Actual
//! plan(&Desired, &Actual, &PlanOptions) ──▶ Plan           (pure, deterministic DAG of actions)
//! ```
//!
//! Entry points: [`config::load_dir`], [`artifact::resolve`], [`fleet::observe_fleet`],
//! [`plan::plan`]. Hosts are reached through the [`transport::Transport`] trait;
//! [`transport::LocalTransport`] and [`transport::MockTransport`] are built in.
#![warn(missing_docs)]

pub mod artifact;
pub mod config;
pub mod execute;
pub mod fleet;
pub mod layout;
pub mod observe;
pub mod operation;
pub mod package;
pub mod plan;
pub mod state;
pub mod transport;

pub use config::{Config, ConfigError};
pub use operation::Operation;
pub use plan::{Plan, PlanOptions, plan};
pub use state::{Actual, Desired};
