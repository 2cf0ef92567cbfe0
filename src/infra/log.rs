//! CRI container log files: one record per line,
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>\n`, where `P`
//! marks a partial line (a line longer than `MAX_LINE` is cut into `P`
//! records followed by an `F` record) and `F` a full one. The kubelet,
//! `crictl logs` and log shippers parse exactly this.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest record body; longer lines are split into partial records, as
/// containerd and CRI-O do.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Format a Unix time as RFC 3339 with nanoseconds in UTC,
/// e.g. `2024-05-01T12:00:00.000000001Z`.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:09}Z",
        d.subsec_nanos()
    )
}

/// Splits a byte stream into CRI log records.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feed bytes; `emit(body, full)` is called for each complete record.
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let (line, rest) = (&data[..i], &data[i + 1..]);
                    self.push_capped(line, &mut emit);
                    emit(&self.pending, true);
                    self.pending.clear();
                    data = rest;
                }
                None => {
                    self.push_capped(data, &mut emit);
                    data = &[];
                }
            }
        }
    }

    /// Append to the pending line, cutting partial records at MAX_LINE.
    fn push_capped(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while self.pending.len() + bytes.len() > MAX_LINE {
            let take = MAX_LINE - self.pending.len();
            self.pending.extend_from_slice(&bytes[..take]);
            emit(&self.pending, false);
            self.pending.clear();
            bytes = &bytes[take..];
        }
        self.pending.extend_from_slice(bytes);
    }

    /// At end of stream: a trailing line without newline becomes a full
    /// record.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.pending.is_empty() {
            emit(&self.pending, true);
            self.pending.clear();
        }
    }
}

/// A container's log file with a splitter per stream.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    stdout: LineSplitter,
    stderr: LineSplitter,
    record: Vec<u8>,
    /// The error records are being lost to (a full disk, a removed
    /// directory), and how many were lost since the first.
    failing: Option<String>,
    lost: u64,
    /// A change between writing and losing records not yet reported.
    note: Option<LogNote>,
}

/// A change in whether a container's log can be written, for the infra's
/// log and the container's status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogNote {
    /// Records are being dropped: the message says why.
    Failing(String),
    /// Writes work again; the message says how many records were lost.
    Recovered(String),
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        let mut l = LogFile {
            path: path.to_path_buf(),
            file: None,
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
            record: Vec::with_capacity(256),
            failing: None,
            lost: 0,
            note: None,
        };
        l.reopen()?;
        Ok(l)
    }

    /// Close and reopen the path (after the kubelet rotated the file).
    pub fn reopen(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path)?;
        self.file = Some(f);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Log bytes read from a stream.
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        let mut splitter = std::mem::take(self.splitter(stream));
        splitter.feed(data, |body, full| self.emit(stream, body, full));
        *self.splitter(stream) = splitter;
    }

    /// The stream reached EOF.
    pub fn finish(&mut self, stream: Stream) {
        let mut splitter = std::mem::take(self.splitter(stream));
        splitter.finish(|body, full| self.emit(stream, body, full));
        *self.splitter(stream) = splitter;
    }

    fn splitter(&mut self, stream: Stream) -> &mut LineSplitter {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// One record, one write(2) on an O_APPEND file: records never
    /// interleave and a crash cuts at most the record being written.
    fn emit(&mut self, stream: Stream, body: &[u8], full: bool) {
        self.record.clear();
        self.record
            .extend_from_slice(rfc3339_nano(SystemTime::now()).as_bytes());
        self.record.push(b' ');
        self.record.extend_from_slice(stream.name().as_bytes());
        self.record.extend_from_slice(if full { b" F " } else { b" P " });
        self.record.extend_from_slice(body);
        self.record.push(b'\n');
        if let Some(f) = self.file.as_mut() {
            // A full disk or a removed directory loses this record, never
            // the container: the process must not block on its logs. The
            // loss is reported once when it starts and once when it ends.
            match f.write_all(&self.record) {
                Ok(()) => {
                    if self.failing.take().is_some() {
                        self.note = Some(LogNote::Recovered(format!(
                            "log {} is writable again; {} records were lost",
                            self.path.display(),
                            self.lost
                        )));
                        self.lost = 0;
                    }
                }
                Err(e) => {
                    self.lost += 1;
                    if self.failing.is_none() {
                        let msg = format!("writing log {}: {e}; output is being dropped", self.path.display());
                        self.failing = Some(msg.clone());
                        self.note = Some(LogNote::Failing(msg));
                    }
                }
            }
        }
    }

    /// What changed since the last call, if anything.
    pub fn take_note(&mut self) -> Option<LogNote> {
        self.note.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn write_errors_are_noted_once_and_recovery_too() {
        // /dev/full: every write fails with ENOSPC.
        let mut log = LogFile::open(Path::new("/dev/full")).unwrap();
        log.write(Stream::Stdout, b"a\nb\nc\n");
        match log.take_note() {
            Some(LogNote::Failing(m)) => assert!(m.contains("No space left on device"), "{m}"),
            other => panic!("{other:?}"),
        }
        log.write(Stream::Stdout, b"d\n");
        assert_eq!(log.take_note(), None, "reported once");
        assert_eq!(log.lost, 4);
        let dir = tempfile::tempdir().unwrap();
        log.path = dir.path().join("0.log");
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"e\n");
        match log.take_note() {
            Some(LogNote::Recovered(m)) => assert!(m.contains("4 records were lost"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 5);
        assert_eq!(rfc3339_nano(t), "2024-02-29T23:59:59.000000005Z");
        let t = UNIX_EPOCH + Duration::new(4_102_444_800, 999_999_999);
        assert_eq!(rfc3339_nano(t), "2100-01-01T00:00:00.999999999Z");
    }

    fn split(chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |b, f| out.push((String::from_utf8_lossy(b).into_owned(), f)));
        }
        s.finish(|b, f| out.push((String::from_utf8_lossy(b).into_owned(), f)));
        out
    }

    #[test]
    fn lines_across_reads_and_partials() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n\n", b"tail"]),
            vec![
                ("hello".into(), true),
                ("world".into(), true),
                (String::new(), true),
                ("tail".into(), true)
            ]
        );
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input[..100], &input[100..]]);
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].0.len(), out[0].1), (MAX_LINE, false));
        assert_eq!((out[1].0.len(), out[1].1), (MAX_LINE, false));
        assert_eq!((out[2].0.len(), out[2].1), (10, true));
        // Exactly MAX_LINE then newline: one full record.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(split(&[&exact]).len(), 1);
    }

    #[test]
    fn log_file_format_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path).unwrap();
        log.write(Stream::Stdout, b"a\nb");
        log.write(Stream::Stderr, b"err\n");
        log.finish(Stream::Stdout);
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"after\n");
        let old = std::fs::read_to_string(dir.path().join("0.log.1")).unwrap();
        let lines: Vec<&str> = old.lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, (stream, tag, body)) in
            lines
                .iter()
                .zip([("stdout", "F", "a"), ("stderr", "F", "err"), ("stdout", "F", "b")])
        {
            let parts: Vec<&str> = line.splitn(4, ' ').collect();
            assert!(parts[0].ends_with('Z') && parts[0].len() == 30, "{line}");
            assert_eq!((parts[1], parts[2], parts[3]), (stream, tag, body));
        }
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(new.ends_with(" stdout F after\n"), "{new}");
    }
}
