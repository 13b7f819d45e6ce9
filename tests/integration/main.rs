//! The integration tests: real hosts in this process, one module per area
//! (`distribus-node` processes are tested in bin/distribus-node/tests).
//!
//! One test binary rather than one per file: each binary links the whole
//! library and libp2p, and seventeen of them took about 14 of CI's
//! minutes to build in release.

mod common;

mod attacks;
mod broadcast;
mod channels;
mod directory;
mod gateway;
mod hosts;
mod large;
mod liveness;
mod malformed;
mod membership;
mod messaging;
mod million;
mod queue_groups;
mod relay;
mod requests;
