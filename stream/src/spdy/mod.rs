//! SPDY/3.1, as Kubernetes' streaming clients speak it: frames and their
//! header compression (frame.rs), and sessions of many streams over one
//! connection (session.rs).

mod dictionary;
pub mod frame;
pub mod session;

pub use frame::{header, Headers};
pub use session::{Role, Session, SessionError, SessionHandle, Stream, StreamSender};
