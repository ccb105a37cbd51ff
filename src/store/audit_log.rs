//! The audit log on disk: JSON lines appended to numbered segment files under
//! `<data_dir>/audit/`, a new segment every 8 MiB and at every start.
//!
//! The audit log is the one thing written per request, and it is only ever appended,
//! read newest first and trimmed oldest first. sled kept every record written to it in
//! memory (measured: 245 MB resident after 110,000 records written at 11,000 a second,
//! whatever its cache size), so a busy daemon's memory followed its traffic. Files cost
//! the daemon no memory beyond a buffered line or two; the kernel's page cache holds
//! what is read.
//!
//! Every call runs on a blocking thread (the audit writer's, the admin API's reads go
//! through `spawn_blocking`), under one lock: appends, reads and trims never interleave.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::AuditLines;
use crate::domain::records::{AuditKind, AuditQuery, AuditRecord};

/// A segment is closed and a new one begun past this size.
const SEGMENT_BYTES: u64 = 8 << 20;

pub struct AuditLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Every segment, oldest first.
    segments: Vec<Segment>,
    /// Appending to the last segment, once this process has written to it.
    writer: Option<BufWriter<File>>,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    /// Complete lines, and every byte (a line cut by a crash counts its bytes only).
    records: u64,
    bytes: u64,
    /// When the oldest record in it began, once known (appends keep it; a rewrite or a
    /// start forgets it until retention reads the segment again).
    oldest_ms: Option<u64>,
}

impl AuditLog {
    /// Opens the log in `dir` (creating it), counting what each segment holds.
    pub fn open(dir: &Path) -> io::Result<AuditLog> {
        fs::create_dir_all(dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let content = fs::read(entry.path())?;
            segments.push(Segment {
                seq,
                records: content.iter().filter(|b| **b == b'\n').count() as u64,
                bytes: content.len() as u64,
                oldest_ms: None,
            });
        }
        segments.sort_by_key(|s| s.seq);
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                segments,
                writer: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:010}.jsonl"))
    }

    /// Appends records, in order (see `append_lines`).
    pub fn append(&self, records: &[AuditRecord]) -> io::Result<()> {
        self.append_lines(&[AuditLines::from(records)])
    }

    /// Appends lines already encoded, in order, handed to the kernel before it returns
    /// (`flush` makes them durable). The lines are written as they are: the buffers
    /// are the recorders' (see `crate::audit`), none is made here.
    pub fn append_lines(&self, batches: &[AuditLines]) -> io::Result<()> {
        let mut inner = self.lock();
        let full = inner
            .segments
            .last()
            .is_none_or(|s| s.bytes >= SEGMENT_BYTES);
        if inner.writer.is_none() || full {
            let seq = inner.segments.last().map_or(0, |s| s.seq + 1);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.path(seq))?;
            inner.writer = Some(BufWriter::new(file));
            inner.segments.push(Segment {
                seq,
                records: 0,
                bytes: 0,
                oldest_ms: Some(u64::MAX),
            });
        }
        let Some(writer) = inner.writer.as_mut() else {
            return Ok(());
        };
        for lines in batches {
            writer.write_all(lines.bytes())?;
        }
        writer.flush()?;
        if let Some(last) = inner.segments.last_mut() {
            for lines in batches {
                last.records += lines.records();
                last.bytes += lines.bytes().len() as u64;
                if let Some(oldest) = lines.oldest_ms() {
                    last.oldest_ms = last.oldest_ms.map(|known| known.min(oldest));
                }
            }
        }
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn flush(&self) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(writer) = inner.writer.as_mut() {
            writer.flush()?;
            writer.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// Records and bytes held.
    pub fn size(&self) -> (u64, u64) {
        let inner = self.lock();
        inner.segments.iter().fold((0, 0), |(records, bytes), s| {
            (records + s.records, bytes + s.bytes)
        })
    }

    /// The newest records that match, oldest first: lines are read from the newest
    /// written back until the limit is met, so the console's 500 cost 500 parses, not a
    /// segment's worth. (Records are written as requests end: a long request's record
    /// sits after those of shorter ones that began later; the answer is ordered by when
    /// each began.)
    pub fn read(&self, query: &AuditQuery) -> io::Result<Vec<AuditRecord>> {
        let (since, until) = (
            query.since_ms.unwrap_or(0),
            query.until_ms.unwrap_or(u64::MAX),
        );
        // Tenant names need no escaping in JSON (config and key rules), so a line that
        // does not hold the name is skipped unparsed.
        let tenant = query
            .tenant
            .as_ref()
            .map(|t| format!("\"tenant\":\"{t}\"").into_bytes());
        let inner = self.lock();
        let mut found = Vec::new();
        'segments: for segment in inner.segments.iter().rev() {
            let content = match fs::read(self.path(segment.seq)) {
                Ok(content) => content,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in content.split_inclusive(|b| *b == b'\n').rev() {
                if let Some(tenant) = &tenant
                    && !line.windows(tenant.len()).any(|w| w == tenant.as_slice())
                {
                    continue;
                }
                let Ok(record) = serde_json::from_slice::<AuditRecord>(line) else {
                    continue;
                };
                if (since..until).contains(&record.at_ms) && query.matches(&record) {
                    found.push(record);
                    if query.limit > 0 && found.len() >= query.limit {
                        break 'segments;
                    }
                }
            }
        }
        // Back to the order written, then by when each began: records of the same
        // millisecond keep the order they happened in.
        found.reverse();
        found.sort_by_key(|r| r.at_ms);
        Ok(found)
    }

    /// A segment's bytes (empty when it is gone).
    fn content(&self, seq: u64) -> io::Result<Vec<u8>> {
        match fs::read(self.path(seq)) {
            Ok(content) => Ok(content),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Writes a segment again with only the lines `keep` chooses (given what retention
    /// reads of each; none when the line cannot be read: cut by a crash); returns how
    /// many records went. An emptied segment is removed.
    fn rewrite(
        &self,
        inner: &mut Inner,
        at: usize,
        mut keep: impl FnMut(&Option<Line>) -> bool,
    ) -> io::Result<u64> {
        let seq = inner.segments[at].seq;
        let content = self.content(seq)?;
        let lines: Vec<&[u8]> = content.split_inclusive(|b| *b == b'\n').collect();
        let before = lines.len();
        let kept: Vec<&[u8]> = lines
            .into_iter()
            .filter(|line| keep(&serde_json::from_slice(line).ok()))
            .collect();
        if kept.len() == before {
            return Ok(0);
        }
        // The segment being appended to is closed first; the next append begins another.
        if at + 1 == inner.segments.len() {
            inner.writer = None;
        }
        let path = self.path(seq);
        if kept.is_empty() {
            fs::remove_file(&path)?;
        } else {
            let temporary = path.with_extension("jsonl.tmp");
            let mut out = BufWriter::new(File::create(&temporary)?);
            for line in &kept {
                out.write_all(line)?;
            }
            out.flush()?;
            out.get_ref().sync_data()?;
            fs::rename(&temporary, &path)?;
        }
        let segment = &mut inner.segments[at];
        segment.records = kept.iter().filter(|l| l.ends_with(b"\n")).count() as u64;
        segment.bytes = kept.iter().map(|l| l.len() as u64).sum();
        segment.oldest_ms = None;
        Ok((before - kept.len()) as u64)
    }

    /// When the oldest record of segment `at` began, read once and then remembered.
    fn oldest_ms(&self, inner: &mut Inner, at: usize) -> io::Result<u64> {
        if let Some(oldest) = inner.segments[at].oldest_ms {
            return Ok(oldest);
        }
        let content = self.content(inner.segments[at].seq)?;
        let oldest = content
            .split_inclusive(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Line>(line).ok())
            .map(|line| line.at_ms)
            .min()
            .unwrap_or(u64::MAX);
        inner.segments[at].oldest_ms = Some(oldest);
        Ok(oldest)
    }

    /// Drops records older than `before_ms`, then, while over `max_bytes`, records of
    /// no tenant (failed authentications; operators' actions always stay) oldest first,
    /// then the oldest; returns how many were dropped.
    pub fn trim(&self, before_ms: u64, max_bytes: u64) -> io::Result<u64> {
        let mut inner = self.lock();
        let mut dropped = 0;
        // Segments are in the order records were written: the old ones are in front.
        let mut at = 0;
        while at < inner.segments.len() {
            // Nothing to drop here: no need to read the segment (8 MiB) again.
            if self.oldest_ms(&mut inner, at)? >= before_ms {
                break;
            }
            let gone = self.rewrite(&mut inner, at, |r| {
                r.as_ref().is_some_and(|r| r.at_ms >= before_ms)
            })?;
            dropped += gone;
            if gone == 0 {
                break;
            }
            at += 1;
        }
        let over = |inner: &Inner| inner.segments.iter().map(|s| s.bytes).sum::<u64>() > max_bytes;
        for phase in [Phase::Anonymous, Phase::Oldest] {
            let mut at = 0;
            while over(&inner) && at < inner.segments.len() {
                let mut excess = inner
                    .segments
                    .iter()
                    .map(|s| s.bytes)
                    .sum::<u64>()
                    .saturating_sub(max_bytes);
                let content = self.content(inner.segments[at].seq)?;
                // The oldest lines of the chosen kind, as many as make up the excess.
                let lines: Vec<&[u8]> = content.split_inclusive(|b| *b == b'\n').collect();
                let mut going = vec![false; lines.len()];
                for (i, line) in lines.iter().enumerate() {
                    let record = serde_json::from_slice::<Line>(line).ok();
                    if excess == 0 {
                        break;
                    }
                    let goes = match phase {
                        Phase::Oldest => true,
                        Phase::Anonymous => record.as_ref().is_none_or(|r| {
                            r.tenant.is_none() && r.kind != Some(AuditKind::Operator)
                        }),
                    };
                    if goes {
                        going[i] = true;
                        excess = excess.saturating_sub(line.len() as u64);
                    }
                }
                let mut index = 0;
                dropped += self.rewrite(&mut inner, at, |_| {
                    index += 1;
                    !going[index - 1]
                })?;
                at += 1;
            }
        }
        inner.segments.retain(|s| s.bytes > 0 || s.records > 0);
        Ok(dropped)
    }
}

enum Phase {
    Anonymous,
    Oldest,
}

/// What retention reads of a line: when its request began, whether it has a tenant and
/// its kind (the rest of the record is skipped, not built).
#[derive(serde::Deserialize)]
struct Line {
    at_ms: u64,
    #[serde(default)]
    tenant: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    kind: Option<AuditKind>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at_ms: u64, note: &str) -> AuditRecord {
        AuditRecord {
            at_ms,
            kind: Some(AuditKind::Request),
            tenant: Some("acme".into()),
            outcome: Some(note.into()),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn records_span_segments_and_read_newest_first_within_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        // ~9 MiB of records: two segments.
        let note = "x".repeat(400);
        for batch in 0..20u64 {
            let records: Vec<AuditRecord> =
                (0..1000).map(|i| record(batch * 1000 + i, &note)).collect();
            log.append(&records).unwrap();
        }
        let segments = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(segments, 2, "a new segment past 8 MiB");
        assert_eq!(log.size().0, 20_000);
        let newest = log
            .read(&AuditQuery {
                limit: 3,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(
            newest.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
            [19_997, 19_998, 19_999]
        );
        let window = log
            .read(&AuditQuery {
                since_ms: Some(100),
                until_ms: Some(110),
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(window.len(), 10, "from the older segment");
        let tenant = |name: &str| AuditQuery {
            tenant: Some(name.into()),
            limit: 2,
            ..AuditQuery::default()
        };
        let acme = log.read(&tenant("acme")).unwrap();
        assert_eq!(
            acme.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
            [19_998, 19_999]
        );
        assert_eq!(log.read(&tenant("acm")).unwrap(), [], "whole names only");
        // Records of one millisecond come back in the order they were written.
        log.append(&[record(30_000, "first"), record(30_000, "second")])
            .unwrap();
        let same = log
            .read(&AuditQuery {
                since_ms: Some(30_000),
                ..AuditQuery::default()
            })
            .unwrap();
        let notes: Vec<_> = same.iter().map(|r| r.outcome.as_deref()).collect();
        assert_eq!(notes, [Some("first"), Some("second")]);
    }

    #[test]
    fn a_line_cut_by_a_crash_is_skipped_and_the_next_start_writes_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path()).unwrap();
            log.append(&[record(1, "a"), record(2, "b")]).unwrap();
            log.flush().unwrap();
        }
        let first = dir.path().join(format!("{:010}.jsonl", 0));
        let mut file = OpenOptions::new().append(true).open(&first).unwrap();
        file.write_all(br#"{"at_ms":3,"ten"#).unwrap();
        drop(file);
        let log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(log.size().0, 2, "complete lines only");
        log.append(&[record(4, "d")]).unwrap();
        let all = log.read(&AuditQuery::default()).unwrap();
        assert_eq!(all.iter().map(|r| r.at_ms).collect::<Vec<_>>(), [1, 2, 4]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        // Trimming by age rewrites what it keeps and leaves the cut line out.
        assert_eq!(
            log.trim(2, u64::MAX).unwrap(),
            2,
            "record 1 and the cut line"
        );
        let all = log.read(&AuditQuery::default()).unwrap();
        assert_eq!(all.iter().map(|r| r.at_ms).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(log.size().0, 2);
    }

    #[test]
    fn retention_by_age_reads_a_segment_only_when_it_holds_something_old() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path()).unwrap();
            log.append(&(10..20).map(|t| record(t, "a")).collect::<Vec<_>>())
                .unwrap();
        }
        // After a start the first segment's oldest record is unknown; the second's is
        // known from its appends (one out of order, as a long request's record is).
        let log = AuditLog::open(dir.path()).unwrap();
        log.append(&(31..40).map(|t| record(t, "b")).collect::<Vec<_>>())
            .unwrap();
        log.append(&[record(30, "late")]).unwrap();
        assert_eq!(log.trim(5, u64::MAX).unwrap(), 0, "nothing is that old");
        assert_eq!(
            log.trim(25, u64::MAX).unwrap(),
            10,
            "the whole first segment"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(log.trim(25, u64::MAX).unwrap(), 0);
        assert_eq!(log.trim(33, u64::MAX).unwrap(), 3, "30, 31 and 32");
        let left = log.read(&AuditQuery::default()).unwrap();
        assert_eq!(
            left.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
            (33..40).collect::<Vec<_>>()
        );
    }
}
