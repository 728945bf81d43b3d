//! Identifiers the core hands out or receives: peers, protocols, streams, requests.

use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// An opaque peer key: the bytes of a libp2p `PeerId` (or any identity the
/// embedding application uses). The core compares and hashes it, nothing more.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey(Bytes);

impl PeerKey {
    /// Wraps the given bytes as a peer key.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        PeerKey(bytes.into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for PeerKey {
    fn from(b: &[u8]) -> Self {
        PeerKey(Bytes::copy_from_slice(b))
    }
}

impl From<Vec<u8>> for PeerKey {
    fn from(b: Vec<u8>) -> Self {
        PeerKey(Bytes::from(b))
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short hex of the tail: the head of a PeerId is a constant multihash prefix.
        let b = &self.0;
        let tail = &b[b.len().saturating_sub(6)..];
        write!(f, "PeerKey(")?;
        for byte in tail {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// A protocol id such as `/echo/1.0.0`, cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol(Arc<str>);

impl Protocol {
    /// Wraps a protocol name.
    pub fn new(name: impl AsRef<str>) -> Self {
        Protocol(Arc::from(name.as_ref()))
    }

    /// The protocol's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Protocol {
    fn from(s: &str) -> Self {
        Protocol::new(s)
    }
}

impl From<String> for Protocol {
    fn from(s: String) -> Self {
        Protocol(Arc::from(s))
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stream the core asked for (client) or was told about (server). Ids are
/// allocated by the core and never reused within one core instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

/// A request handed out by [`crate::Client::send`]; unique within one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}
