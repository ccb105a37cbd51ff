//! An audit record as the log's JSON line, written by hand.
//!
//! The log is read with serde (`AuditRecord`'s derived `Deserialize`), and this writes
//! the very bytes `serde_json::to_writer` would: same keys, order, absent fields and
//! escaping (a test compares the two on every field). It exists because the derived
//! serializer was the costliest thing the gateway did per request after parsing:
//! ~6,400 instructions a record, most of them spent scanning each key and value a byte
//! at a time for characters to escape. Here keys are written as they are, and a string
//! that needs no escaping (every name and id the gateway writes) is checked in one
//! branch-free pass and copied; one that does is escaped by serde_json itself.

use std::io;

use crate::domain::records::AuditRecord;

/// Audit records as the log's lines, encoded where they were recorded and written as
/// they are: a worker fills one buffer and the writer takes it whole, so no record's
/// strings are freed on another thread than the one that made them.
#[derive(Debug, Default)]
pub struct AuditLines {
    bytes: Vec<u8>,
    records: u64,
    oldest_ms: u64,
}

impl AuditLines {
    /// Lines written into `buffer`'s memory (emptied first), so a buffer is used again.
    pub fn reusing(mut buffer: Vec<u8>) -> AuditLines {
        buffer.clear();
        AuditLines {
            bytes: buffer,
            records: 0,
            oldest_ms: 0,
        }
    }

    /// Appends `record` as one line. A record that cannot be encoded (it cannot: every
    /// field is text, a number or JSON already) leaves the lines as they were.
    pub fn push(&mut self, record: &AuditRecord) -> io::Result<()> {
        let start = self.bytes.len();
        if let Err(error) = write_record(&mut self.bytes, record) {
            self.bytes.truncate(start);
            return Err(error);
        }
        self.bytes.push(b'\n');
        self.oldest_ms = match self.records {
            0 => record.at_ms,
            _ => self.oldest_ms.min(record.at_ms),
        };
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Every line, each ending in a newline.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// When the oldest record began (none when there are none).
    pub fn oldest_ms(&self) -> Option<u64> {
        (self.records > 0).then_some(self.oldest_ms)
    }

    /// The buffer, to be used again.
    pub fn into_buffer(self) -> Vec<u8> {
        self.bytes
    }
}

impl From<&[AuditRecord]> for AuditLines {
    fn from(records: &[AuditRecord]) -> AuditLines {
        let mut lines = AuditLines::default();
        for record in records {
            // Infallible (see `push`); a record that failed would be left out.
            let _ = lines.push(record);
        }
        lines
    }
}

/// Appends `record` to `out` as one JSON object (no newline).
pub fn write_record(out: &mut Vec<u8>, r: &AuditRecord) -> io::Result<()> {
    out.extend_from_slice(b"{\"at_ms\":");
    number(out, r.at_ms);
    out.extend_from_slice(b",\"kind\":");
    serde_json::to_writer(&mut *out, &r.kind)?;
    macro_rules! fields {
        ($($field:ident: $write:ident),* $(,)?) => {$(
            if let Some(value) = &r.$field {
                out.extend_from_slice(concat!(",\"", stringify!($field), "\":").as_bytes());
                $write(out, value)?;
            }
        )*};
    }
    fields!(
        tenant: text,
        request_id: text,
        key_id: text,
        endpoint: text,
        model: text,
        stream: flag,
        region: text,
        instance: text,
        status: count,
        error: text,
        tokens_reserved: count,
        prompt_tokens: count,
        completion_tokens: count,
        estimated: flag,
        usage_capped: flag,
        source: text,
        count: count,
        queue_ms: count,
        latency_ms: count,
        cache: text,
        route: text,
        prompt: value,
        answer: text,
        actor: text,
        action: text,
        target: text,
        before: value,
        after: value,
        outcome: text,
        replica: text,
    );
    out.push(b'}');
    Ok(())
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn count<N: itoa::Integer + Copy>(out: &mut Vec<u8>, n: &N) -> io::Result<()> {
    number(out, *n);
    Ok(())
}

fn flag(out: &mut Vec<u8>, b: &bool) -> io::Result<()> {
    out.extend_from_slice(if *b { b"true" } else { b"false" });
    Ok(())
}

fn value(out: &mut Vec<u8>, v: &serde_json::Value) -> io::Result<()> {
    Ok(serde_json::to_writer(&mut *out, v)?)
}

fn text(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    // No early exit, so the compiler checks sixteen bytes at a time.
    let escapes = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escapes {
        return Ok(serde_json::to_writer(&mut *out, s)?);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::records::AuditKind;

    fn line(record: &AuditRecord) -> String {
        let mut out = Vec::new();
        write_record(&mut out, record).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Every field set: a field added to `AuditRecord` fails to compile here until it
    /// is written above too.
    fn every_field(text: &str) -> AuditRecord {
        let s = || Some(text.to_string());
        AuditRecord {
            at_ms: 1_764_590_400_123,
            kind: Some(AuditKind::Operator),
            tenant: s(),
            request_id: Some(text.into()),
            key_id: Some(text.into()),
            endpoint: Some(text.to_string().into()),
            model: s(),
            stream: Some(true),
            region: Some(text.into()),
            instance: Some(text.into()),
            status: Some(429),
            error: s(),
            tokens_reserved: Some(u64::MAX),
            prompt_tokens: Some(0),
            completion_tokens: Some(17),
            estimated: Some(false),
            usage_capped: Some(true),
            source: s(),
            count: Some(3),
            queue_ms: Some(12),
            latency_ms: Some(345),
            cache: Some(text.to_string().into()),
            route: Some(text.into()),
            prompt: Some(serde_json::json!([{"role": "user", "content": text}])),
            answer: s(),
            actor: s(),
            action: s(),
            target: s(),
            before: Some(serde_json::json!({"rpm": 60, "paused": false, "why": text})),
            after: Some(serde_json::json!(["a", 1, null])),
            outcome: s(),
            replica: s(),
        }
    }

    #[test]
    fn lines_are_byte_for_byte_what_serde_json_writes() {
        let texts = [
            "acme",
            "",
            "req_01JDXK3V9Q2R7M5T8W4Y6Z0ABC",
            "p2c: us-east-1 (2 in flight) over us-west-2 (5)",
            "a \"quoted\" word",
            "back\\slash",
            "line\nbreak\ttab\r\u{8}\u{c}",
            "\u{0}\u{1}\u{1f} controls",
            "\u{7f} is not escaped",
            "héllo wörld 日本語 🚀",
            "a string longer than sixteen bytes, with a \" near its end",
        ];
        for text in texts {
            let record = every_field(text);
            assert_eq!(
                line(&record),
                serde_json::to_string(&record).unwrap(),
                "for {text:?}"
            );
        }
        for record in [
            AuditRecord::default(),
            AuditRecord {
                kind: Some(AuditKind::Request),
                tenant: Some("acme".into()),
                status: Some(200),
                ..AuditRecord::default()
            },
            AuditRecord {
                kind: Some(AuditKind::Tool),
                answer: Some(String::new()),
                ..AuditRecord::default()
            },
        ] {
            assert_eq!(line(&record), serde_json::to_string(&record).unwrap());
        }
    }

    #[test]
    fn audit_lines_hold_each_record_as_its_line_and_know_the_oldest() {
        let records = [
            AuditRecord {
                at_ms: 20,
                tenant: Some("a".into()),
                ..AuditRecord::default()
            },
            every_field("x \"y\""),
            AuditRecord {
                at_ms: 10,
                ..AuditRecord::default()
            },
        ];
        let mut lines = AuditLines::reusing(b"left over".to_vec());
        assert!(lines.is_empty());
        assert_eq!(lines.oldest_ms(), None);
        for record in &records {
            lines.push(record).unwrap();
        }
        assert_eq!(lines.records(), 3);
        assert_eq!(lines.oldest_ms(), Some(10));
        let expected: String = records.iter().map(|r| line(r) + "\n").collect();
        assert_eq!(String::from_utf8(lines.bytes().to_vec()).unwrap(), expected);
        assert_eq!(AuditLines::from(&records[..]).bytes(), lines.bytes());
        // Used again: empty, whatever it held.
        let again = AuditLines::reusing(lines.into_buffer());
        assert!(again.is_empty() && again.bytes().is_empty());
    }

    #[test]
    fn lines_read_back_as_the_same_record() {
        let record = every_field("x \"y\" \\ z\n");
        let read: AuditRecord = serde_json::from_str(&line(&record)).unwrap();
        assert_eq!(read, record);
    }
}
