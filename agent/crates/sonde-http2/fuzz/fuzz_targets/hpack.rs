//! HPACK alone: arbitrary header blocks through one decoder, fresh or joined late. The first
//! byte picks the mode and the split of the input into consecutive blocks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_http2::hpack::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let limit = if mode & 1 == 0 { 4096 } else { 65536 };
    let mut d = if mode & 2 == 0 { Decoder::new(limit) } else { Decoder::new_late(limit) };
    let block_len = usize::from(mode >> 2).max(1);
    for block in rest.chunks(block_len) {
        let mut fields = 0usize;
        let _ = d.decode_block(block, &mut |_| fields += 1);
        assert!(d.table().size() <= d.table().max_size());
        assert!(d.table().max_size() <= limit);
        assert!(fields <= block.len());
    }
});
