//! The runtime billing-svc and payment-svc share: configuration, authentication,
//! telemetry, the database pool and migrations, serving (health, reflection,
//! shutdown) and the mapping of errors to gRPC statuses. No business rules live here.

pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod conn;
pub mod db;
pub mod deadline;
pub mod errors;
pub mod event_watch;
pub mod failpoint;
pub mod metrics;
pub mod money;
mod pg_direct;
pub mod reflection;
pub mod server;
pub mod shutdown;
pub mod sqlite_reads;
pub mod sqlite_writes;
pub mod startup;
pub mod telemetry;
pub mod text;
pub mod wire;
