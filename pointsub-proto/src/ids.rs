//! Identifiers the core hands out or receives: peers, protocols, streams, requests.

use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// An opaque peer key: the bytes of a libp2p `PeerId` (or any identity the
/// embedding application uses). The core compares and hashes it, nothing more.
///
/// Keys of up to [`PeerKey::INLINE`] bytes (every libp2p `PeerId`: at most
/// 42) are held inline, so a clone is a copy: the core clones a request's
/// peer key several times, and a shared reference count, bumped from
/// every thread that sends to the peer, cost more than the copy.
#[derive(Clone)]
pub struct PeerKey(KeyBytes);

#[derive(Clone)]
enum KeyBytes {
    Inline {
        len: u8,
        bytes: [u8; PeerKey::INLINE],
    },
    Shared(Bytes),
}

impl PeerKey {
    /// The longest key held inline.
    pub const INLINE: usize = 46;

    /// Wraps the given bytes as a peer key.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.len() <= Self::INLINE {
            Self::from(&bytes[..])
        } else {
            PeerKey(KeyBytes::Shared(bytes))
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyBytes::Shared(b) => b,
        }
    }
}

impl PartialEq for PeerKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PeerKey {}

impl PartialOrd for PeerKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PeerKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for PeerKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl From<&[u8]> for PeerKey {
    fn from(b: &[u8]) -> Self {
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= Self::INLINE => {
                let mut bytes = [0u8; Self::INLINE];
                bytes[..b.len()].copy_from_slice(b);
                PeerKey(KeyBytes::Inline { len, bytes })
            }
            _ => PeerKey(KeyBytes::Shared(Bytes::copy_from_slice(b))),
        }
    }
}

impl From<Vec<u8>> for PeerKey {
    fn from(b: Vec<u8>) -> Self {
        if b.len() <= Self::INLINE {
            Self::from(&b[..])
        } else {
            PeerKey(KeyBytes::Shared(Bytes::from(b)))
        }
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short hex of the tail: the head of a PeerId is a constant multihash prefix.
        let b = self.as_bytes();
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

#[cfg(test)]
mod peer_key_tests {
    use super::PeerKey;
    use bytes::Bytes;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    fn hash(k: &PeerKey) -> u64 {
        let mut h = DefaultHasher::new();
        k.hash(&mut h);
        h.finish()
    }

    /// Inline and shared keys behave as their bytes do: equal, ordered and
    /// hashed alike whatever the representation, on both sides of the
    /// inline limit.
    #[test]
    fn keys_compare_and_hash_as_their_bytes() {
        let lens = [0, 1, 38, 42, PeerKey::INLINE, PeerKey::INLINE + 1, 80];
        let mut keys = Vec::new();
        for &len in &lens {
            for fill in [0u8, 7, 255] {
                let bytes: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let a = PeerKey::new(Bytes::from(bytes.clone()));
                let b = PeerKey::from(&bytes[..]);
                let c = PeerKey::from(bytes.clone());
                for k in [&a, &b, &c] {
                    assert_eq!(k.as_bytes(), &bytes[..]);
                    assert_eq!(k, &a);
                    assert_eq!(hash(k), hash(&a));
                    assert_eq!(k.clone(), a);
                }
                keys.push((bytes, a));
            }
        }
        for (x, kx) in &keys {
            for (y, ky) in &keys {
                assert_eq!(kx.cmp(ky), x.cmp(y), "{x:?} vs {y:?}");
                assert_eq!(kx == ky, x == y);
            }
        }
    }
}
