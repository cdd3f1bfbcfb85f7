//! gpulse-testkit: real peers for tests, started and cleaned up by the test itself.
//! A PostgreSQL server ([`postgres`]) and a kubelet's pod-resources API on a unix
//! socket ([`kubelet`]), and promtool's lint of an exposition ([`promtool`]); it is
//! test support only and ships in no binary.

#![forbid(unsafe_code)]

pub mod kubelet;
pub mod postgres;
pub mod promtool;
