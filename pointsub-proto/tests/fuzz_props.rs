//! The fuzz targets' bodies (`pointsub_proto::check`) under proptest, so
//! CI runs them on every change, plus every input libFuzzer ever crashed
//! them with (`fuzz/regressions/<target>/`).

use pointsub_proto::check;
use pointsub_proto::frame::{FrameHeader, FrameKind, HEADER_LEN};
use proptest::prelude::*;

/// Bytes that often look like frames: valid headers with random fields
/// and payloads, mixed with noise, so the properties reach deep states.
fn framed_bytes() -> impl Strategy<Value = Vec<u8>> {
    let frame = (
        prop_oneof![Just(1u8), any::<u8>()],
        1u8..=4,
        any::<u8>(),
        0u64..4,
        prop_oneof![0u32..200, 60_000u32..70_000, Just(u32::MAX)],
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(version, kind, flags, id, len, payload)| {
            let mut out = vec![version, kind, flags, 0];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&payload);
            out
        });
    let chunk = prop_oneof![
        3 => frame,
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ];
    (
        proptest::collection::vec(any::<u8>(), 8),
        proptest::collection::vec(chunk, 0..12),
    )
        .prop_map(|(cuts, chunks)| {
            let mut out = cuts;
            for c in chunks {
                out.extend(c);
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoder_survives_anything(data in framed_bytes()) {
        check::decode_messages(&data);
    }

    #[test]
    fn decoder_survives_noise(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check::decode_messages(&data);
    }

    #[test]
    fn inflater_survives_anything(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check::decompress(&data);
    }

    #[test]
    fn server_survives_anything(data in framed_bytes()) {
        check::server_inbound(&data);
    }
}

/// A fuzz target's body.
type Target = fn(&[u8]);

/// Inputs saved from fuzzing runs (crashes fixed since, and seeds).
#[test]
fn saved_inputs_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let targets: [(&str, Target); 3] = [
        ("decode_messages", check::decode_messages),
        ("decompress", check::decompress),
        ("server_inbound", check::server_inbound),
    ];
    let mut replayed = 0;
    for (name, run) in targets {
        for dir in ["regressions", "corpus"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).expect("readable input");
                run(&data);
                replayed += 1;
            }
        }
    }
    assert!(
        replayed > 0,
        "no saved fuzz inputs found under {}",
        root.display()
    );
}

#[test]
fn a_deflate_bomb_stops_at_the_limit() {
    let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; 8 << 20], 10);
    assert!(bomb.len() < 64 * 1024);
    check::decompress(&bomb);
    assert!(pointsub_proto::compress::decompress(&bomb, check::LIMIT).is_err());
}

#[test]
fn a_four_gib_length_is_refused_without_buffering() {
    let header = FrameHeader {
        kind: FrameKind::Request,
        flags: Default::default(),
        request_id: 1,
        len: u32::MAX,
    };
    let mut data = vec![0u8; 8];
    data.extend_from_slice(&header.to_bytes());
    data.extend(std::iter::repeat_n(7u8, 10_000));
    check::decode_messages(&data);
    assert_eq!(HEADER_LEN, 16);
}
