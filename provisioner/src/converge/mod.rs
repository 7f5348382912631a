//! The converge half: reach the hosts ([`transport`], [`ssh`]), read what they hold ([`facts`]),
//! compare it with the desired state ([`plan`]), change them ([`apply`]) and report ([`status`]).
//! It knows the desired state ([`crate::desired`]) and nothing of how it was rendered.

pub mod apply;
pub mod facts;
pub mod parallel;
pub mod plan;
pub mod scram;
pub mod ssh;
pub mod status;
pub mod transport;
