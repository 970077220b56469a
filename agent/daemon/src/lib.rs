//! The agent daemon as a library, so tests drive it exactly as `main` does.
//!
//! - [`app`] owns start-up and shutdown: config, logging, state, audit, socket, readiness, the
//!   signal loop and the drain. It starts every subsystem and, at shutdown, awaits each one's
//!   task in order (engine, metrics, views, mesh, admin server); a subsystem's own helpers (the
//!   mesh's saver, the engine's views) end with it.
//! - [`server`] accepts connections on the admin socket and reads each peer's credentials.
//! - [`api`] routes requests, authorizes them by role and audits what must be audited.
//! - [`cluster`] answers the cluster-wide views by asking every node over the mesh.
//! - [`mesh`] runs the gossip mesh and discovery, and holds the handle other subsystems use.
//! - [`node`] runs the control-plane engine (formation, leader, join material) over the mesh;
//!   [`node::engine_config`] is the one conversion from the config to the engine's.
//! - [`doctor`] builds the leader's doctor duty and answers `kubedna doctor`.
//! - [`reload`] re-reads the config on SIGHUP or `kubedna reload`: refuse, audit, apply.
//! - [`selfaudit`] writes what the agent changes on its own into the audit log.
//! - [`metrics`] renders the Prometheus metrics, served on `metrics.listen` and the API.
//! - [`logging`] sets up tracing and lets the log filter change at run time.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod catalogue;
pub mod cluster;
pub mod doctor;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod reload;
pub mod selfaudit;
pub mod server;
pub mod tasks;
