//! Chunk profiles: what a chunk held, measured twice, so that a load that altered
//! values is refused before anything becomes visible.
//!
//! A row count catches lost and added rows, not a NULL turned into an empty string, a
//! truncated or re-encoded text, a rounded decimal, two columns swapped, or a dropped
//! row whose place a duplicate took. So the extractor measures, from the exact bytes it
//! ships, per column the NULL count and one checksum of the values ([`Measure`]); the
//! measures travel with the object (its metadata, [`Profile::encode`]); the loader asks
//! the warehouse for the same measures over the rows that very load attempt inserted
//! ([`crate::warehouse::Transaction::profile`]) before it commits, and any difference
//! fails the chunk naming the column, the measure and both values
//! ([`crate::error::Error::ProfileMismatch`]).
//!
//! Every measure is an integer that does not depend on how an engine prints a type:
//! counts, sums of integers, sums of exact decimals at the column's scale, character
//! counts. Types with no such measure get their NULL count only; [`Measure::of`] says
//! why for each.

use crate::types::{Column, ColumnType};
use std::fmt;

/// What is measured of a column's non-NULL values, besides the NULL count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Nothing beyond the NULL count.
    Nulls,
    /// Sum of the text lengths in characters (Unicode code points): DuckDB's
    /// `length`, Snowflake's `LENGTH` ("UTF-8 characters are counted as a single
    /// character"). Catches truncation, re-encoding, and quotes or separators lost or
    /// gained; with the NULL count, also an empty string turned into NULL or back.
    Chars,
    /// Sum of the integer values (exact: i128 here, HUGEINT in DuckDB, NUMBER(38) in
    /// Snowflake, both far from overflow for any chunk).
    Sum,
    /// Sum of exact decimals as integers at the column's scale (`1.50` at scale 2 is
    /// 150): a rounded or altered digit changes it. The warehouse's sum is read back
    /// at the same scale whatever digits it prints.
    Unscaled(u8),
    /// Count of the true values.
    Trues,
    /// Sum of the byte lengths of binary values (PostgreSQL ships them hex-encoded).
    Octets,
}

/// The largest precision whose sums are checked: a chunk's sum of `numeric(18,s)`
/// values stays below 10^38 (NUMBER(38) in Snowflake, DECIMAL(38) in DuckDB) for up
/// to 10^20 rows, while a sum of wider decimals may overflow the warehouse's type.
pub const MAX_SUMMED_PRECISION: u8 = 18;

impl Measure {
    /// The measure of a column type, and why types have none:
    /// - `real`, `double`: the text of a float differs between engines (shortest
    ///   round trip or fixed digits), and a float sum depends on the order of addition;
    /// - dates, times and timestamps: left to the NULL count for now (their text has
    ///   BC years, infinities and offsets; an epoch sum would need that calendar in
    ///   both places);
    /// - `json`, arrays: Snowflake re-serializes a VARIANT or ARRAY (key order, number
    ///   and whitespace), so no length of its text matches the source's;
    /// - `uuid`: every value is 36 characters; its length says nothing;
    /// - `numeric(p,s)` with p above [`MAX_SUMMED_PRECISION`]: see there.
    pub fn of(ty: &ColumnType) -> Measure {
        match ty {
            ColumnType::Text => Measure::Chars,
            ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt => Measure::Sum,
            ColumnType::Decimal { precision, scale } if *precision <= MAX_SUMMED_PRECISION => {
                Measure::Unscaled(*scale)
            }
            ColumnType::Boolean => Measure::Trues,
            ColumnType::Bytes => Measure::Octets,
            ColumnType::Decimal { .. }
            | ColumnType::Real
            | ColumnType::Double
            | ColumnType::Date
            | ColumnType::Time
            | ColumnType::Timestamp
            | ColumnType::TimestampTz
            | ColumnType::Json
            | ColumnType::JsonArray
            | ColumnType::Uuid
            | ColumnType::List(_) => Measure::Nulls,
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Nulls => "nulls",
            Measure::Chars => "characters",
            Measure::Sum => "sum",
            Measure::Unscaled(_) => "sum",
            Measure::Trues => "true values",
            Measure::Octets => "bytes",
        }
    }

    /// The value of a non-NULL field as PostgreSQL's CSV output holds it: `raw` with
    /// `quotes` doubled quotes inside (a quoted field without its outer quotes), or
    /// `None` when the text is not a value of the type (the measure is then not
    /// checked).
    fn value(self, raw: &[u8], quotes: usize) -> Option<i128> {
        match self {
            Measure::Nulls => Some(0),
            Measure::Chars => Some((chars(raw) - quotes) as i128),
            Measure::Sum => parse_unscaled(raw, 0),
            Measure::Unscaled(scale) => parse_unscaled(raw, scale),
            Measure::Trues => match raw {
                b"t" | b"true" => Some(1),
                b"f" | b"false" => Some(0),
                _ => None,
            },
            Measure::Octets => raw
                .len()
                .is_multiple_of(2)
                .then_some((raw.len() / 2) as i128),
        }
    }

    /// Read the warehouse's aggregate back (printed as text; NULL when no row had a
    /// value).
    pub fn read(self, text: Option<&str>) -> Option<i128> {
        let Some(t) = text.map(str::trim) else {
            return Some(0);
        };
        match self {
            Measure::Unscaled(scale) => parse_unscaled(t.as_bytes(), scale),
            _ => parse_unscaled(t.as_bytes(), 0),
        }
    }
}

/// Code points of UTF-8 text: the bytes that do not continue a character.
fn chars(b: &[u8]) -> usize {
    b.iter().filter(|&&c| (c as i8) >= -0x40).count()
}

/// `[-+]digits[.digits]` as an integer at `scale` decimal places; `None` for anything
/// else (exponents, NaN, infinities, more decimals than `scale` unless they are zeros,
/// overflow).
pub fn parse_unscaled(b: &[u8], scale: u8) -> Option<i128> {
    let (neg, b) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let (int, frac) = match b.iter().position(|&c| c == b'.') {
        Some(p) => (&b[..p], &b[p + 1..]),
        None => (b, &b[..0]),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut v: i128 = 0;
    for &c in int {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as i128)?;
    }
    for (i, &c) in frac.iter().enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        if i < scale as usize {
            v = v.checked_mul(10)?.checked_add((c - b'0') as i128)?;
        } else if c != b'0' {
            return None;
        }
    }
    for _ in frac.len()..scale as usize {
        v = v.checked_mul(10)?;
    }
    Some(if neg { -v } else { v })
}

/// One column's measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ColumnProfile {
    pub nulls: u64,
    /// The measure's value; `None` when it is not checked (no measure, or a value the
    /// extractor could not read as its type).
    pub value: Option<i128>,
}

/// The measures of a chunk's columns, in the schema's order (a prefix of them when a
/// table is too wide for the metadata, see [`Profile::encode`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    pub columns: Vec<ColumnProfile>,
}

/// The metadata key of an object's profile.
pub const METADATA_KEY: &str = "profile";

/// The most bytes an encoded profile takes: GCS allows 4 KiB per custom metadata
/// value and 8 KiB of custom metadata per object in all
/// (`MAX_CUSTOM_METADATA_FIELD_VALUE_BYTES`, `MAX_CUSTOM_METADATA_TOTAL_SIZE_BYTES` in
/// <https://cloud.google.com/storage/docs/reference/rpc/google.storage.v1>); the chunk's
/// other keys take a few hundred bytes. Columns past the limit are not profiled.
pub const MAX_ENCODED: usize = 4096;

impl Profile {
    /// `v1:` then per column `nulls` or `nulls/value`, comma-separated; stops before
    /// the column that would pass [`MAX_ENCODED`].
    pub fn encode(&self) -> String {
        let mut s = String::from("v1:");
        for (i, c) in self.columns.iter().enumerate() {
            let item = match c.value {
                Some(v) => format!("{}/{v}", c.nulls),
                None => c.nulls.to_string(),
            };
            if s.len() + item.len() + 1 > MAX_ENCODED {
                break;
            }
            if i > 0 {
                s.push(',');
            }
            s.push_str(&item);
        }
        s
    }

    /// The inverse of [`Profile::encode`]; `None` for a version or shape it does not
    /// know (an object from another pgp: its chunk is then checked by count only).
    pub fn decode(s: &str) -> Option<Profile> {
        let body = s.strip_prefix("v1:")?;
        if body.is_empty() {
            return Some(Profile::default());
        }
        let columns = body
            .split(',')
            .map(|item| {
                let (n, v) = match item.split_once('/') {
                    Some((n, v)) => (n, Some(v.parse().ok()?)),
                    None => (item, None),
                };
                Some(ColumnProfile {
                    nulls: n.parse().ok()?,
                    value: v,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Profile { columns })
    }

    /// The first difference between what the source sent (`self`) and what the
    /// warehouse loaded, over the columns both profiles cover.
    pub fn difference(&self, loaded: &Profile, columns: &[Column]) -> Option<Difference> {
        for ((s, l), col) in self.columns.iter().zip(&loaded.columns).zip(columns) {
            if s.nulls != l.nulls {
                return Some(Difference {
                    column: col.name.as_str().to_string(),
                    measure: "nulls",
                    source: s.nulls.to_string(),
                    loaded: l.nulls.to_string(),
                });
            }
            if let (Some(a), Some(b)) = (s.value, l.value) {
                if a != b {
                    return Some(Difference {
                        column: col.name.as_str().to_string(),
                        measure: Measure::of(&col.ty).name(),
                        source: a.to_string(),
                        loaded: b.to_string(),
                    });
                }
            }
        }
        None
    }
}

/// A measure that differs between the source's chunk and the loaded rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub column: String,
    pub measure: &'static str,
    pub source: String,
    pub loaded: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "column `{}`: {} {} in postgres, {} loaded",
            self.column, self.measure, self.source, self.loaded
        )
    }
}

/// Computes a chunk's profile from the records PostgreSQL sends (or from decoded
/// values, [`Profiler::add_value`]).
#[derive(Debug, Clone)]
pub struct Profiler {
    measures: Vec<Measure>,
    /// Fields per record: the columns, plus the record-end field when there is one.
    fields: usize,
    columns: Vec<ColumnProfile>,
    /// A record was not the CSV PostgreSQL writes: no profile is given.
    broken: bool,
}

impl Profiler {
    pub fn new(columns: &[Column], record_end: bool) -> Self {
        Profiler {
            measures: columns.iter().map(|c| Measure::of(&c.ty)).collect(),
            fields: columns.len() + usize::from(record_end),
            columns: columns
                .iter()
                .map(|c| ColumnProfile {
                    nulls: 0,
                    value: (Measure::of(&c.ty) != Measure::Nulls).then_some(0),
                })
                .collect(),
            broken: false,
        }
    }

    /// Add one record as PostgreSQL's `COPY ... (FORMAT csv, DELIMITER E'\t')` writes
    /// it (one CopyData message): unquoted fields, an unquoted empty field for NULL,
    /// quoted fields with doubled quotes, tabs between, a newline at the end.
    pub fn add_record(&mut self, rec: &[u8]) {
        if self.broken {
            return;
        }
        let end = rec.len() - usize::from(rec.last() == Some(&b'\n'));
        let mut pos = 0;
        for i in 0..self.fields {
            let (raw, quotes, null);
            if pos < end && rec[pos] == b'"' {
                // A quoted field: up to the quote not followed by another.
                let mut j = pos + 1;
                let mut q = 0;
                loop {
                    match memchr::memchr(b'"', &rec[j..end]) {
                        Some(k) if j + k + 1 < end && rec[j + k + 1] == b'"' => {
                            q += 1;
                            j += k + 2;
                        }
                        Some(k) => {
                            raw = &rec[pos + 1..j + k];
                            pos = j + k + 1;
                            break;
                        }
                        None => {
                            self.broken = true;
                            return;
                        }
                    }
                }
                quotes = q;
                null = false;
            } else {
                let stop = memchr::memchr(b'\t', &rec[pos..end]).map_or(end, |k| pos + k);
                raw = &rec[pos..stop];
                quotes = 0;
                null = raw.is_empty();
                pos = stop;
            }
            if i + 1 < self.fields {
                if pos >= end || rec[pos] != b'\t' {
                    self.broken = true;
                    return;
                }
                pos += 1;
            } else if pos != end {
                self.broken = true;
                return;
            }
            if i < self.columns.len() {
                self.add(i, (!null).then_some((raw, quotes)));
            }
        }
    }

    /// Add one decoded value of column `i` (`None`: NULL).
    pub fn add_value(&mut self, i: usize, v: Option<&str>) {
        self.add(i, v.map(|s| (s.as_bytes(), 0)));
    }

    fn add(&mut self, i: usize, v: Option<(&[u8], usize)>) {
        let c = &mut self.columns[i];
        match v {
            None => c.nulls += 1,
            Some((raw, quotes)) => {
                if let Some(acc) = c.value {
                    c.value = self.measures[i]
                        .value(raw, quotes)
                        .and_then(|x| acc.checked_add(x));
                }
            }
        }
    }

    /// The profile, or `None` when a record was not CSV as PostgreSQL writes it.
    pub fn finish(self) -> Option<Profile> {
        (!self.broken).then_some(Profile {
            columns: self.columns,
        })
    }
}

/// Whether the extractor skips profiling: only when `PGP_BENCH_NO_PROFILE=1`, which
/// exists so that `bench/validation.sh` can measure what profiling costs in one run.
/// Objects extracted so are checked by count only.
pub fn disabled_for_bench() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("PGP_BENCH_NO_PROFILE").as_deref() == Ok("1"))
}

/// A warehouse's profile query result (per column: the NULL count, then the measure's
/// aggregate, both as text) read into a profile; a result it cannot read fails as a
/// permanent warehouse error of `context`.
pub fn from_aggregates(
    columns: &[Column],
    values: &[Option<String>],
    context: &str,
) -> crate::error::Result<Profile> {
    let measures: Vec<Measure> = columns.iter().map(|c| Measure::of(&c.ty)).collect();
    read_aggregates(&measures, values).ok_or_else(|| {
        crate::error::Error::warehouse(
            context,
            format!("unreadable aggregates {values:?}"),
            crate::error::ErrorKind::Permanent,
        )
    })
}

fn read_aggregates(measures: &[Measure], values: &[Option<String>]) -> Option<Profile> {
    if values.len() != 2 * measures.len() {
        return None;
    }
    let columns = measures
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let nulls = values[2 * i].as_deref().map_or(Some(0), |s| {
                parse_unscaled(s.trim().as_bytes(), 0).map(|v| v as u64)
            })?;
            let value = match m {
                Measure::Nulls => None,
                m => m.read(values[2 * i + 1].as_deref()),
            };
            Some(ColumnProfile { nulls, value })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Profile { columns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::conformance::col;

    fn cols() -> Vec<Column> {
        vec![
            col("id", ColumnType::BigInt),
            col("t", ColumnType::Text),
            col(
                "d",
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            col("b", ColumnType::Boolean),
            col("j", ColumnType::Json),
            col("x", ColumnType::Bytes),
        ]
    }

    fn profile(records: &[&str], record_end: bool) -> Option<Profile> {
        let mut p = Profiler::new(&cols(), record_end);
        for r in records {
            p.add_record(r.as_bytes());
        }
        p.finish()
    }

    #[test]
    fn csv_records_are_measured_as_their_values() {
        let p = profile(
            &[
                "1\tab\t1.50\tt\t{}\tff00\n",
                "-3\t\"\"\t\t\t\"{\"\"a\"\": 1}\"\t\n",
                "5\t\"x\ty\"\"é\"\t-0.25\tf\tnull\t00\n",
                "\t\t10.00\tt\t\t\n",
            ],
            false,
        )
        .unwrap();
        let got: Vec<(u64, Option<i128>)> = p.columns.iter().map(|c| (c.nulls, c.value)).collect();
        assert_eq!(
            got,
            vec![
                (1, Some(3)),
                // "ab", "" (quoted: the empty string), "x<tab>y\"é" (5 characters)
                (1, Some(2 + 5)),
                (1, Some(150 - 25 + 1000)),
                (1, Some(2)),
                (1, None),
                (2, Some(3)),
            ]
        );
    }

    #[test]
    fn the_record_end_field_is_not_a_column() {
        let with = profile(&["1\tab\t1.50\tt\t{}\tff00\t1\n"], true).unwrap();
        let without = profile(&["1\tab\t1.50\tt\t{}\tff00\n"], false).unwrap();
        assert_eq!(with, without);
        // A record with a field too few or too many gives no profile.
        assert_eq!(profile(&["1\tab\t1.50\tt\t{}\tff00\n"], true), None);
        assert_eq!(profile(&["1\tab\t1.50\tt\t{}\tff00\t1\t1\n"], true), None);
        assert_eq!(profile(&["1\t\"ab\n"], false), None);
    }

    #[test]
    fn decoded_values_give_the_same_profile() {
        let mut p = Profiler::new(&cols(), false);
        let rows: [[Option<&str>; 6]; 2] = [
            [
                Some("1"),
                Some("x\ty\"é"),
                Some("1.50"),
                Some("t"),
                None,
                None,
            ],
            [None, Some(""), None, Some("f"), Some("{}"), Some("ab")],
        ];
        for r in rows {
            for (i, v) in r.iter().enumerate() {
                p.add_value(i, *v);
            }
        }
        let mut q = Profiler::new(&cols(), false);
        q.add_record(b"1\t\"x\ty\"\"\xc3\xa9\"\t1.50\tt\t\t\n");
        q.add_record(b"\t\"\"\t\tf\t{}\tab\n");
        assert_eq!(p.finish(), q.finish());
    }

    #[test]
    fn unscaled_decimals_read_any_printing_of_the_same_value() {
        assert_eq!(parse_unscaled(b"1.5", 2), Some(150));
        assert_eq!(parse_unscaled(b"1.500", 2), Some(150));
        assert_eq!(parse_unscaled(b"-0.25", 2), Some(-25));
        assert_eq!(parse_unscaled(b"12", 2), Some(1200));
        assert_eq!(parse_unscaled(b".5", 1), Some(5));
        assert_eq!(parse_unscaled(b"1.255", 2), None);
        assert_eq!(parse_unscaled(b"NaN", 2), None);
        assert_eq!(parse_unscaled(b"1e5", 0), None);
        assert_eq!(parse_unscaled(b"-", 0), None);
        assert_eq!(parse_unscaled(b"", 0), None);
    }

    #[test]
    fn profiles_survive_their_encoding_and_name_the_first_difference() {
        let p = profile(&["1\tab\t1.50\tt\t{}\tff00\n", "\t\t\t\t\t\n"], false).unwrap();
        let s = p.encode();
        assert_eq!(s, "v1:1/1,1/2,1/150,1/1,1,1/2");
        assert_eq!(Profile::decode(&s), Some(p.clone()));
        assert_eq!(Profile::decode("v2:1"), None);
        assert_eq!(Profile::decode("v1:x"), None);
        let mut loaded = p.clone();
        loaded.columns[2].value = Some(151);
        let d = p.difference(&loaded, &cols()).unwrap();
        assert_eq!(d.to_string(), "column `d`: sum 150 in postgres, 151 loaded");
        loaded.columns[1].nulls = 2;
        assert_eq!(p.difference(&loaded, &cols()).unwrap().measure, "nulls");
        assert_eq!(p.difference(&p, &cols()), None);
    }

    #[test]
    fn a_wide_table_profiles_the_columns_that_fit() {
        let p = Profile {
            columns: vec![
                ColumnProfile {
                    nulls: 123_456,
                    value: Some(i128::MAX),
                };
                200
            ],
        };
        let s = p.encode();
        assert!(s.len() <= MAX_ENCODED, "{}", s.len());
        let d = Profile::decode(&s).unwrap();
        assert!(d.columns.len() > 50 && d.columns.len() < 200);
        assert_eq!(d.columns[..], p.columns[..d.columns.len()]);
    }

    #[test]
    fn warehouse_aggregates_read_back_at_the_columns_scale() {
        let m = cols();
        let v: Vec<Option<String>> = [
            Some("1"),
            Some("3"),
            Some("0"),
            None,
            Some("2"),
            Some("11.250"),
            Some("0"),
            Some("2"),
            Some("4"),
            None,
            Some("0"),
            Some("3"),
        ]
        .iter()
        .map(|s| s.map(String::from))
        .collect();
        let p = from_aggregates(&m, &v, "test").unwrap();
        assert_eq!(
            p.columns[1],
            ColumnProfile {
                nulls: 0,
                value: Some(0)
            }
        );
        assert_eq!(p.columns[2].value, Some(1125));
        assert_eq!(
            p.columns[4],
            ColumnProfile {
                nulls: 4,
                value: None
            }
        );
        assert!(from_aggregates(&m, &v[..3], "test")
            .unwrap_err()
            .to_string()
            .contains("unreadable aggregates"));
    }
}
