//! layerd: a host storage manager for container layers.
//!
//! Data flows one way: [`dbus`] → [`engine`] → [`backend`] → kernel
//! ([`sys`]). [`monitor`] calls the engine on a timer. See
//! docs/ARCHITECTURE.md for the map.

pub mod backend;
pub mod config;
pub mod containerd;
pub mod dbus;
pub mod engine;
pub mod filters;
pub mod logging;
pub mod maintenance;
pub mod monitor;
pub mod shared;
pub mod sys;
