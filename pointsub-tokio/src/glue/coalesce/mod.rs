//! Fewer, larger system calls under noise and yamux: flushes that wait
//! for one more turn of the connection task ([`CoalescedFlush`], above
//! noise), and reads that fetch a noise message whole ([`FrameReads`],
//! below it).
//!
//! ## Flushes
//!
//! yamux (0.14, behind libp2p-yamux 0.48) flushes its socket after every
//! frame it writes, and it cuts writes into frames of 16 KiB. Under noise,
//! each flush seals what is buffered into its own noise message and writes
//! it with its own `sendto`: a 1 MiB body goes out as 64 messages and 64
//! system calls per direction, where noise could carry it in 16 (a noise
//! message holds up to 64 KiB) and the kernel take it in fewer writes.
//! The frame size is not configurable through libp2p-yamux.
//!
//! [`CoalescedFlush`] sits between the security layer and the muxer.
//! When the muxer asks it to flush after writing at least a full frame
//! ([`DEFER_FLUSH_FROM`]) since its previous flush, it answers "not yet",
//! wakes the task at once, and lets the muxer go on: the muxer writes the
//! frames its streams have queued meanwhile, and the flush reaches the
//! security layer once a turn of the task wrote less than a full frame
//! (or nothing). So a large body's frames leave in as few noise messages
//! as fit, and the last of them one task wake-up later. Smaller writes
//! (requests and responses that fit in a frame, window updates, pings)
//! flush at once, exactly as without the wrapper, so latency at low load
//! does not change. Nothing waits for a timer or for more data: a flush
//! is put off only while the muxer keeps writing full frames, and noise
//! sends a full 64 KiB message as soon as it has one.
//!
//! Measured on the 2-core VM, 1 MiB x 4 in flight (`pointsub bench
//! --large --systems pointsub-tokio`, ten alternations of fresh
//! processes): 322 -> 359 requests/s (medians; pair by pair 0.84-1.34x,
//! median 1.07x); per 3 s, `sendto` calls 91k -> 28k and context switches
//! 37k -> 7.5k. With two such processes sharing the two cores there is no
//! gain (seven runs favoured the build without it by about 5 %, three more
//! were even). Small messages (581 B x 1, x 100, x 10,000): unchanged.
//!
//! ## Reads
//!
//! libp2p-noise reads its socket 8 KiB at a time, eight `recvfrom` calls
//! for a full noise message. [`FrameReads`] follows noise's framing in the
//! bytes it reads and, when noise asks for less than the rest of the
//! current message, reads that rest (and the next message's length) in
//! one call; it never reads further, so no more data enters the process
//! than noise holds anyway (details on [`FrameReads`]).
//!
//! Measured on the 2-core VM, 1 MiB x 4 in flight: `recvfrom` calls per
//! 3 s 226k -> 78k (`perf stat`, counts only). Nine alternations of fresh
//! processes (`pointsub bench --large`, three of them with a first version
//! that read to the message's end only): requests/s 348 -> 372 and the
//! ratio to the cipher-and-kernel bound 0.59 -> 0.66 (medians; 0.56-0.71
//! before, 0.60-0.72 after); 1 MiB x 1 320 -> 336 requests/s. Small
//! messages, and peak RSS at 10,000 in flight (57.2-59.8 MiB before,
//! 58.6-60.5 after: within the spread between runs), unchanged.
//!
//! ## Using it
//!
//! The wire format is unchanged (the same noise protocol, negotiated under
//! the same name): a peer that does not coalesce talks to one that does.
//!
//! [`Coalesced`] wraps a security upgrade (noise, TLS) so that its
//! connections come out wrapped; [`NoiseFrameReads`] wraps noise so that
//! it reads through [`FrameReads`]; [`noise`] is noise wrapped in both, a
//! drop-in for `libp2p::noise::Config::new` in `SwarmBuilder::with_tcp`
//! and `with_relay_client`:
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pointsub_tokio::libp2p::{tcp, SwarmBuilder};
//! use pointsub_tokio::{behaviour::yamux_config, coalesce};
//! let swarm = SwarmBuilder::with_new_identity()
//!     .with_tokio()
//!     .with_tcp(tcp::Config::default(), coalesce::noise, yamux_config)?
//! #   .with_behaviour(|_| pointsub_tokio::libp2p::swarm::dummy::Behaviour)?
//! #   .build();
//! # Ok(()) }
//! ```

mod flush;
mod reads;

pub use flush::{CoalescedFlush, DEFER_FLUSH_FROM};
pub use reads::{FrameReads, NoiseFrameReads};

use futures::future::{MapOk, TryFutureExt};
use libp2p::PeerId;
use libp2p::core::UpgradeInfo;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::identity::Keypair;

/// A security upgrade whose connections come out as
/// [`CoalescedFlush`]: the same protocol names and handshake as the
/// upgrade it wraps.
#[derive(Debug, Clone)]
pub struct Coalesced<U>(pub U);

impl<U: UpgradeInfo> UpgradeInfo for Coalesced<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

/// Wraps the connection of an authenticated `(peer, connection)` pair.
type Wrap<S> = fn((PeerId, S)) -> (PeerId, CoalescedFlush<S>);

fn wrap<S>((peer, io): (PeerId, S)) -> (PeerId, CoalescedFlush<S>) {
    (peer, CoalescedFlush::new(io))
}

impl<C, U, S> InboundConnectionUpgrade<C> for Coalesced<U>
where
    U: InboundConnectionUpgrade<C, Output = (PeerId, S)>,
{
    type Output = (PeerId, CoalescedFlush<S>);
    type Error = U::Error;
    type Future = MapOk<U::Future, Wrap<S>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(socket, info).map_ok(wrap as Wrap<S>)
    }
}

impl<C, U, S> OutboundConnectionUpgrade<C> for Coalesced<U>
where
    U: OutboundConnectionUpgrade<C, Output = (PeerId, S)>,
{
    type Output = (PeerId, CoalescedFlush<S>);
    type Error = U::Error;
    type Future = MapOk<U::Future, Wrap<S>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0
            .upgrade_outbound(socket, info)
            .map_ok(wrap as Wrap<S>)
    }
}

/// libp2p's noise for `keypair`, its connections coalescing flushes
/// ([`Coalesced`]) and reading whole noise messages ([`NoiseFrameReads`]):
/// a drop-in for `libp2p::noise::Config::new` ([module docs](self)).
pub fn noise(
    keypair: &Keypair,
) -> Result<Coalesced<NoiseFrameReads<libp2p::noise::Config>>, libp2p::noise::Error> {
    libp2p::noise::Config::new(keypair).map(|config| Coalesced(NoiseFrameReads(config)))
}
