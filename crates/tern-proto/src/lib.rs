//! Tern's contracts: the protobuf messages and gRPC services of `proto/`,
//! generated at build time, plus [`ErrorCode`], the one list of error codes
//! that every service and the gateway agree on.
//!
//! **Architecture Invariant:** this crate knows no service, no storage and no
//! transport beyond tonic's generated code.

pub mod clients;
mod error;

pub use error::{ErrorCode, Failure, ServiceError, error_code_of, relay};

/// Generated code, nested as the proto packages are (`tern.message.v1`) so
/// cross-package references resolve; lints on generated items stay quiet.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    pub mod tern {
        pub mod auth {
            pub mod v1 {
                tonic::include_proto!("tern.auth.v1");
            }
        }
        pub mod group {
            pub mod v1 {
                tonic::include_proto!("tern.group.v1");
            }
        }
        pub mod message {
            pub mod v1 {
                tonic::include_proto!("tern.message.v1");
            }
        }
        pub mod offline {
            pub mod v1 {
                tonic::include_proto!("tern.offline.v1");
            }
        }
        pub mod bus {
            pub mod v1 {
                tonic::include_proto!("tern.bus.v1");
            }
        }
        pub mod webhook {
            pub mod v1 {
                tonic::include_proto!("tern.webhook.v1");
            }
        }
    }
}

/// The generated protobuf types and gRPC stubs, one module per package.
pub mod pb {
    pub use crate::generated::tern::{
        auth::v1 as auth, bus::v1 as bus, group::v1 as group, message::v1 as message,
        offline::v1 as offline, webhook::v1 as webhook,
    };
}

/// Encoded `FileDescriptorSet` of every Tern proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tern_descriptor.bin"));

/// Conversation ids, shared by every service so they agree on the format.
/// A client device's id, which keeps a delivery cursor of its own.
pub mod device {
    /// Longest device id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// What a malformed device id is told.
    pub const RULE: &str = "device must be at most 64 letters, digits, - or _";

    /// At most [`MAX_LEN`] ASCII letters, digits, `-` or `_`; empty is the
    /// user's default device.
    pub fn is_valid(device: &str) -> bool {
        device.len() <= MAX_LEN
            && device.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

pub mod conversation {
    /// The conversation of two users: `dm:{low}:{high}`.
    pub fn direct(a: u64, b: u64) -> String {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        format!("dm:{low}:{high}")
    }

    /// The conversation of a group: `group:{id}`.
    pub fn group(group_id: u64) -> String {
        format!("group:{group_id}")
    }

    /// What a conversation id names.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// A pair of users.
        Direct(u64, u64),
        /// A group.
        Group(u64),
    }

    impl Kind {
        /// The other user of a 1:1 conversation `user` is in; `None` for a
        /// group, or a pair `user` is not part of.
        pub fn peer_of(self, user: u64) -> Option<u64> {
            match self {
                Kind::Direct(a, b) if a == user => Some(b),
                Kind::Direct(a, b) if b == user => Some(a),
                _ => None,
            }
        }
    }

    /// Parses a conversation id; `None` when it is not one Tern makes.
    pub fn parse(id: &str) -> Option<Kind> {
        if let Some(rest) = id.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':')?;
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (a < b && direct(a, b) == id).then_some(Kind::Direct(a, b))
        } else {
            let g: u64 = id.strip_prefix("group:")?.parse().ok()?;
            (group(g) == id).then_some(Kind::Group(g))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn direct_ids_do_not_depend_on_order() {
            assert_eq!(direct(7, 3), "dm:3:7");
            assert_eq!(parse(&direct(7, 3)), Some(Kind::Direct(3, 7)));
            assert_eq!(Kind::Direct(3, 7).peer_of(7), Some(3));
            assert_eq!(Kind::Direct(3, 7).peer_of(5), None);
            assert_eq!(Kind::Group(3).peer_of(3), None);
        }

        #[test]
        fn rejects_foreign_ids() {
            for bad in
                ["", "dm:3:3", "dm:7:3", "dm:03:7", "group:", "group:x", "group:01", "chan:1"]
            {
                assert_eq!(parse(bad), None, "{bad}");
            }
            assert_eq!(parse("group:42"), Some(Kind::Group(42)));
        }
    }
}
