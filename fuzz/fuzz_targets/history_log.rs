//! The history log's record scanner on logs built from valid records (right CRCs) mixed with the
//! fuzzer's own bytes: a scan never panics, keeps every record before the first damage, and what it
//! keeps is exactly what was written. Plain (version 1) and sealed (version 2, a fixed key) logs.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use navigen::format::history::{
    encode_with, header_for, read_header, scan_with, Event, EventKind, Sealer,
};

#[derive(Arbitrary, Debug)]
enum Piece {
    Record { id: String, kind: u8, timestamp_ms: i64 },
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Log {
    sealed: bool,
    with_header: bool,
    pieces: Vec<Piece>,
    cut: Option<u16>,
}

fuzz_target!(|log: Log| {
    let sealer = Sealer::new(&[7; 32], "70.nvh");
    let s = log.sealed.then_some(&sealer);
    let mut bytes = if log.with_header { header_for(s) } else { Vec::new() };
    let mut clean = Vec::new(); // events written before the first garbage
    let mut damaged = false;
    for p in &log.pieces {
        match p {
            Piece::Record { id, kind, timestamp_ms } => {
                let e = Event {
                    item_id: id.clone(),
                    kind: EventKind::from_code(*kind).unwrap_or(EventKind::Other),
                    timestamp_ms: *timestamp_ms,
                };
                if let Ok(rec) = encode_with(&e, s) {
                    bytes.extend_from_slice(&rec);
                    if !damaged {
                        clean.push(e);
                    }
                }
            }
            Piece::Garbage(g) => {
                bytes.extend_from_slice(g);
                damaged |= !g.is_empty();
            }
        }
    }
    let cut = log.cut.map(|c| c as usize).filter(|&c| c < bytes.len());
    if let Some(c) = cut {
        bytes.truncate(c);
    }
    let _ = read_header(&bytes);
    // scan takes the whole file and starts after the header's 16 bytes.
    let (events, good_end, _torn, _bad) = scan_with(&bytes, s);
    assert!(good_end <= bytes.len().max(16));
    if log.with_header && cut.is_none() {
        // Every record written before the first garbage is read back, in order.
        assert!(events.len() >= clean.len(), "{} < {}", events.len(), clean.len());
        assert_eq!(&events[..clean.len()], &clean[..]);
    }
});
