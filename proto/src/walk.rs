//! A walk over every string, repeated field and map an agent can send, generated
//! from the gpulse.v1 descriptors by build.rs.
//!
//! The walk is not written by hand, so a field added to the proto is visited the day
//! it is added, and [`StringField`] and [`RepeatedField`] gain a variant for it: code
//! that matches on them exhaustively (the collector's limits) stops compiling until
//! the new field is given its rule.

/// Receives what a [`Walk`] finds; the first error stops the walk.
pub trait Visitor {
    type Error;
    /// A string field (or map key or value) and its value.
    fn string(&mut self, field: StringField, value: &str) -> Result<(), Self::Error>;
    /// A repeated field or map and how many entries it holds, before its entries are
    /// walked.
    fn repeated(&mut self, field: RepeatedField, len: usize) -> Result<(), Self::Error>;
}

/// A message whose strings and lists can be visited.
pub trait Walk {
    fn walk<V: Visitor + ?Sized>(&self, v: &mut V) -> Result<(), V::Error>;
}

/// The encoded `FileDescriptorSet` of gpulse.v1, for code that reflects over the
/// protocol (tests that enumerate every field).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gpulse_v1.bin"));

include!(concat!(env!("OUT_DIR"), "/gpulse_v1_walk.rs"));
