//! The application data of a Raft log entry: a store [`Command`] behind an `Arc`.
//!
//! openraft clones entries whenever it reads them from the log (to replicate them, to apply
//! them); a command that creates 10,000 tasks would be deep-copied on each read. Shared, a
//! clone is a reference count. The serialised form is the command's own, so logs written
//! before this type existed still decode.

use crate::store::Command;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ops::Deref;
use std::sync::Arc;

/// A store command as Raft carries it (cheap to clone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload(Arc<Command>);

impl From<Command> for Payload {
    fn from(command: Command) -> Self {
        Payload(Arc::new(command))
    }
}

impl Deref for Payload {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.0
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Command::deserialize(deserializer).map(Payload::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Op;

    #[test]
    fn encodes_exactly_like_the_command_and_shares_on_clone() {
        let command = Command { now_ms: 7, op: Op::Batch(Vec::new()) };
        let payload = Payload::from(command.clone());
        let bytes = postcard::to_allocvec(&payload).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&command).unwrap());
        let decoded: Payload = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(*decoded, command);
        let copy = payload.clone();
        assert!(Arc::ptr_eq(&copy.0, &payload.0));
    }
}
