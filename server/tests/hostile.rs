//! The hostile-input suite: whatever a client or a peer sends, the member
//! answers or drops it and keeps serving everyone else, loses no acknowledged
//! write, and restarts cleanly (docs/threat-model.md). One module per way in;
//! every test asserts that the member still serves another client afterwards.
//!
//! Every wait is bounded.

mod support;
