//! Fuzzes mesh packet decoding: raw datagrams and authenticated bodies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kubedna_mesh::fuzzing::decode_packet(data);
});
