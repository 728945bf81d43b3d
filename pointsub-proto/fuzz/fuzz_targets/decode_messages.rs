//! libFuzzer target: `pointsub_proto::check::decode_messages` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pointsub_proto::check::decode_messages(data);
});
