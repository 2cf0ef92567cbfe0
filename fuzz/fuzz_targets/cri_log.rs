//! CRI log files (`infra::log`): the input is a script of writes to a
//! container's stdout and stderr (`LogFile::write`, `LogFile::finish`,
//! through `LineSplitter`). The file written is then read back as the
//! kubelet and `crictl logs` read it, `<time> <stream> <P|F> <text>` per
//! line, and each stream's records must join back into exactly the bytes
//! written (plus a final newline), with `P` records exactly `MAX_LINE`
//! long. The timestamp formatter (`rfc3339_nano`) is checked against a
//! date calculation of its own.
//!
//! Script: one op byte, then its data. `len = op & 0x3f`, stream stderr if
//! `op & 0x40`; `op & 0x80`: a run of `len * 512 + 1` copies of the next
//! byte (long lines), else the next `len` bytes.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use nodelet::infra::log::{rfc3339_nano, LineSplitter, LogFile, Stream, MAX_LINE};

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn check_timestamp(secs: u64, nanos: u32) {
    // Up to 9999-12-31T23:59:59: four-digit years.
    let secs = secs % 253_402_300_800;
    let nanos = nanos % 1_000_000_000;
    let s = rfc3339_nano(UNIX_EPOCH + Duration::new(secs, nanos));
    let b = s.as_bytes();
    assert_eq!(b.len(), 30, "{s}");
    assert!(b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'.');
    assert_eq!(b[29], b'Z');
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().expect("digits");
    let (y, mo, d, h, mi, se, ns) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
        num(20..29),
    );
    assert!(
        (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && se < 60,
        "{s}"
    );
    let back = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se;
    assert_eq!(back, secs as i64, "{s}");
    assert_eq!(ns, i64::from(nanos), "{s}");
}

/// Parse a log file back into each stream's bytes.
fn read_back(text: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert!(text.is_empty() || text.ends_with(b"\n"), "file ends mid-record");
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(4, |&b| b == b' ');
        let ts = parts.next().expect("timestamp");
        assert_eq!(ts.len(), 30, "timestamp {:?}", String::from_utf8_lossy(ts));
        let stream = parts.next().expect("stream");
        let tag = parts.next().expect("tag");
        let body = parts.next().expect("body (maybe empty)");
        let dst = match stream {
            b"stdout" => &mut out,
            b"stderr" => &mut err,
            s => panic!("stream {:?}", String::from_utf8_lossy(s)),
        };
        dst.extend_from_slice(body);
        match tag {
            b"F" => dst.push(b'\n'),
            b"P" => assert_eq!(body.len(), MAX_LINE, "partial record of the wrong length"),
            t => panic!("tag {:?}", String::from_utf8_lossy(t)),
        }
    }
    (out, err)
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 12 {
        let secs = u64::from_le_bytes(data[..8].try_into().unwrap());
        let nanos = u32::from_le_bytes(data[8..12].try_into().unwrap());
        check_timestamp(secs, nanos);
    }

    // One scratch directory per process; the log file is new each run.
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let path = DIR
        .get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
        .join("0.log");
    let _ = std::fs::remove_file(&path);
    let mut log = LogFile::open(&path).expect("open log");
    let (mut want_out, mut want_err) = (Vec::new(), Vec::new());
    let mut splitter = LineSplitter::default();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(op & 0x3f);
        let stream = if op & 0x40 != 0 { Stream::Stderr } else { Stream::Stdout };
        let chunk: Vec<u8> = if op & 0x80 != 0 {
            let Some((&b, tail)) = tail.split_first() else { break };
            rest = tail;
            vec![b; len * 512 + 1]
        } else {
            let n = len.min(tail.len());
            rest = &tail[n..];
            tail[..n].to_vec()
        };
        log.write(stream, &chunk);
        match stream {
            Stream::Stdout => want_out.extend_from_slice(&chunk),
            Stream::Stderr => want_err.extend_from_slice(&chunk),
        }
        // The splitter alone: records never hold a newline nor exceed
        // MAX_LINE.
        splitter.feed(&chunk, |body, full| {
            assert!(body.len() <= MAX_LINE && !body.contains(&b'\n'));
            assert!(full || body.len() == MAX_LINE);
        });
    }
    splitter.finish(|body, full| assert!(full && body.len() <= MAX_LINE));
    log.finish(Stream::Stdout);
    log.finish(Stream::Stderr);
    drop(log);
    for want in [&mut want_out, &mut want_err] {
        if !want.is_empty() && !want.ends_with(b"\n") {
            want.push(b'\n');
        }
    }
    let text = std::fs::read(&path).expect("read log");
    let (out, err) = read_back(&text);
    assert!(out == want_out, "stdout does not read back");
    assert!(err == want_err, "stderr does not read back");
});
