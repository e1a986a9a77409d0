//! rbee-core's integration tests: one binary, a module per area.

mod config_scale;
mod config_table;
mod planner_props;
mod planner_snapshots;
mod support;
