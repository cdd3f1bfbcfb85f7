//! gpulse-testkit: real peers for tests, started and cleaned up by the test itself.
//! Today a PostgreSQL server ([`postgres`]); it is test support only and ships in no
//! binary.

#![forbid(unsafe_code)]

pub mod postgres;
