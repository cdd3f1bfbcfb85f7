//! The fleet page at /fleet: every GPU as a tile, grouped by provider then host and
//! coloured by state, with the fleet's numbers at the top, a view of each host, and
//! updates pushed over server-sent events (a full state, then per-GPU deltas).
//! docs/fleet-page.md describes the states, colours, filters and the event protocol.
//!
//! The model ([`state`], [`tile`], [`delta`]) is built from any
//! [`gpulse_exposition::HostSource`]; [`hub`] publishes it, [`routes`] serves it, and
//! [`access`] lets in what /report lets in. The page itself (assets/) is plain
//! JavaScript and CSS embedded in the binary: it fetches nothing from elsewhere.

pub mod access;
pub mod delta;
pub mod detail;
pub mod hub;
pub mod routes;
pub mod state;
pub mod tile;

pub use routes::{FleetPage, router};
