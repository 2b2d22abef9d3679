//! Queries: classifying a table, the full-table query of an incremental table, and the
//! wrappers that bound a query to a key range or a sample size.
//!
//! GitLab derived the full-table query by splitting the text on the word `WHERE`, which
//! broke on subqueries and on column names containing "where". Here the query is parsed
//! (sqlparser, PostgreSQL dialect), and exactly the top-level `WHERE` conjuncts that use
//! a window placeholder are dropped; every other condition and `additional_filtering`
//! stay. A window condition anywhere else (a subquery, a join) is an error, never a
//! silently wrong query.

use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::params::{substitute, WINDOW_PLACEHOLDERS, WINDOW_RELATED};
use sqlparser::ast::{BinaryOperator, Expr, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// SCD tables are snapshotted whole; incremental tables load a time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Scd,
    Incremental,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Scd => "scd",
            Kind::Incremental => "incremental",
        })
    }
}

/// A table is incremental when its `import_query` holds a window placeholder
/// (`{EXECUTION_DATE}`, `{BEGIN_TIMESTAMP}`, `{END_TIMESTAMP}`), as in GitLab's code.
pub fn classify(import_query: &str) -> Kind {
    let ph = crate::params::placeholders(import_query);
    if ph.iter().any(|p| WINDOW_PLACEHOLDERS.contains(&p.as_str())) {
        Kind::Incremental
    } else {
        Kind::Scd
    }
}

/// The query text with `additional_filtering` appended, as GitLab did (a space, then the
/// filter, which conventionally starts with `AND`).
pub fn with_filtering(import_query: &str, additional_filtering: Option<&str>) -> String {
    let q = strip_terminator(import_query);
    match additional_filtering {
        Some(f) => format!("{q}\n{}", f.trim()),
        None => q.to_string(),
    }
}

/// Trailing whitespace and semicolons removed, so the text can sit inside parentheses.
pub fn strip_terminator(q: &str) -> &str {
    q.trim_end().trim_end_matches(';').trim_end()
}

const SENTINEL: &str = "__pgp_window_";

/// The full-table query of an incremental table: `text` is the query with
/// `additional_filtering` appended and every non-window placeholder already resolved.
/// Window placeholders are still in it.
pub fn full_table_query(table: &str, text: &str) -> Result<String> {
    let err = |message: String| Error::Query {
        table: table.to_string(),
        message,
    };
    let marked = substitute(text, |name| {
        WINDOW_RELATED
            .contains(&name)
            .then(|| format!("{SENTINEL}{name}__"))
    });
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, &marked)
        .map_err(|e| err(format!("the query does not parse: {e}")))?;
    if stmts.len() != 1 {
        return Err(err(format!(
            "expected one statement, found {}",
            stmts.len()
        )));
    }
    let Statement::Query(query) = &mut stmts[0] else {
        return Err(err("the query is not a SELECT".into()));
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(err(
            "the window condition must sit in the WHERE of a plain SELECT (found a set operation)"
                .into(),
        ));
    };
    if let Some(selection) = select.selection.take() {
        let mut kept: Vec<Expr> = Vec::new();
        for c in conjuncts(selection) {
            let text = c.to_string();
            if !text.contains(SENTINEL) {
                kept.push(c);
            } else if text.contains("(SELECT ") {
                // Dropping it would drop the subquery's other conditions too.
                return Err(err(
                    "a window placeholder is used inside a subquery; cannot derive the full-table query".into(),
                ));
            }
        }
        select.selection = kept.into_iter().reduce(|a, b| Expr::BinaryOp {
            left: Box::new(a),
            op: BinaryOperator::And,
            right: Box::new(b),
        });
    }
    let out = stmts[0].to_string();
    if out.contains(SENTINEL) {
        return Err(err(
            "a window placeholder is used outside the top-level WHERE conditions \
             (in a subquery, join or select list); cannot derive the full-table query"
                .into(),
        ));
    }
    Ok(out)
}

fn conjuncts(e: Expr) -> Vec<Expr> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut v = conjuncts(*left);
            v.extend(conjuncts(*right));
            v
        }
        Expr::Nested(inner)
            if matches!(
                *inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner)
        }
        other => vec![other],
    }
}

/// A half-open key range `[lo, hi)`; `None` is unbounded. The first chunk of a
/// chunked table also takes rows whose key is NULL, so no row is ever left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    pub lo: Option<i64>,
    pub hi: Option<i64>,
    /// Whether rows with a NULL key belong to this range.
    pub nulls: bool,
}

impl KeyRange {
    /// The whole table, NULL keys included.
    pub const ALL: KeyRange = KeyRange {
        lo: None,
        hi: None,
        nulls: true,
    };

    /// The SQL condition on `key` (a quoted column of the wrapped query).
    pub fn condition(&self, key: &Ident) -> Option<String> {
        let k = format!("pgp_src.{}", key.quoted());
        let mut parts = Vec::new();
        if let Some(lo) = self.lo {
            parts.push(format!("{k} >= {lo}"));
        }
        if let Some(hi) = self.hi {
            parts.push(format!("{k} < {hi}"));
        }
        if parts.is_empty() {
            return if self.nulls {
                None
            } else {
                Some(format!("{k} IS NOT NULL"))
            };
        }
        let c = parts.join(" AND ");
        Some(if self.nulls {
            format!("(({c}) OR {k} IS NULL)")
        } else {
            c
        })
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lo = self
            .lo
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-inf".into());
        let hi = self
            .hi
            .map(|v| v.to_string())
            .unwrap_or_else(|| "+inf".into());
        write!(f, "[{lo}, {hi})")?;
        if self.nulls {
            f.write_str("+null")?;
        }
        Ok(())
    }
}

/// The most ranges a table is split into. Ranges are cut by key width, so a sparse key
/// (ids from a sequence with gaps, or from the whole integer range) would otherwise make
/// the planner build and publish one range per `step` keys of span: 4.6 trillion for
/// `bigint` keys spread over the type at 2,000,000 keys per range. Past the cap the
/// ranges widen; a dense table that needs more than this many chunks gets larger ones.
pub const MAX_KEY_RANGES: u64 = 10_000;

/// Split `[min, max]` into half-open ranges of `step` keys (widened so that there are
/// at most [`MAX_KEY_RANGES`]). The first range is open below and takes NULL keys, the
/// last is open above (rows inserted after planning with a larger key still land
/// somewhere), so together they cover every possible row.
pub fn key_ranges(min: i64, max: i64, step: u64) -> Vec<KeyRange> {
    let (min, max) = (min as i128, max as i128);
    let span = max - min + 1;
    let cap = MAX_KEY_RANGES as i128;
    let step = (step.max(1) as i128).max((span + cap - 1) / cap);
    let mut bounds = Vec::new();
    let mut b = min + step;
    while b <= max {
        bounds.push(b as i64);
        b += step;
    }
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut lo = None;
    for (i, hi) in bounds.iter().enumerate() {
        out.push(KeyRange {
            lo,
            hi: Some(*hi),
            nulls: i == 0,
        });
        lo = Some(*hi);
    }
    out.push(KeyRange {
        lo,
        hi: None,
        nulls: out.is_empty(),
    });
    out
}

/// Wrap `query` so that it returns `projection` of its rows, within `range` of `key`,
/// and at most `limit` rows. The query text sits on its own lines so a trailing `--`
/// comment cannot swallow the closing parenthesis.
pub fn wrap(
    query: &str,
    projection: &str,
    key: Option<(&Ident, &KeyRange)>,
    limit: Option<u64>,
) -> String {
    let mut s = format!(
        "SELECT {projection} FROM (\n{}\n) AS pgp_src",
        strip_terminator(query)
    );
    if let Some(c) = key.and_then(|(k, r)| r.condition(k)) {
        s.push_str(" WHERE ");
        s.push_str(&c);
    }
    if let Some(n) = limit {
        s.push_str(&format!(" LIMIT {n}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_decide_the_kind() {
        assert_eq!(classify("select * from t"), Kind::Scd);
        assert_eq!(
            classify("select * from t where u between '{BEGIN_TIMESTAMP}' and '{END_TIMESTAMP}'"),
            Kind::Incremental
        );
        assert_eq!(classify("select * from t where x in {IDS}"), Kind::Scd);
    }

    #[test]
    fn the_window_between_is_dropped_and_filtering_kept() {
        let q = with_filtering(
            "SELECT id, updated_at FROM t\nWHERE updated_at BETWEEN '{BEGIN_TIMESTAMP}'::timestamp\n  AND '{END_TIMESTAMP}'::timestamp",
            Some("AND project_id in (1, 2)"),
        );
        let f = full_table_query("t", &q).unwrap();
        assert_eq!(f, "SELECT id, updated_at FROM t WHERE project_id IN (1, 2)");
    }

    #[test]
    fn a_window_only_where_disappears() {
        let f = full_table_query(
            "t",
            "SELECT id FROM t WHERE date >= '{EXECUTION_DATE}'::date - interval '{HOURS} hours' AND date <= '{EXECUTION_DATE}'::date",
        )
        .unwrap();
        assert_eq!(f, "SELECT id FROM t");
    }

    #[test]
    fn subqueries_and_where_in_names_do_not_confuse_it() {
        let f = full_table_query(
            "t",
            "SELECT id, somewhere_id FROM t WHERE id IN (SELECT id FROM u WHERE u.x = 1) AND updated_at > '{BEGIN_TIMESTAMP}'",
        )
        .unwrap();
        assert_eq!(
            f,
            "SELECT id, somewhere_id FROM t WHERE id IN (SELECT id FROM u WHERE u.x = 1)"
        );
    }

    #[test]
    fn a_window_inside_a_subquery_is_an_error() {
        let e = full_table_query(
            "t",
            "SELECT id FROM t WHERE id IN (SELECT id FROM u WHERE u.at > '{BEGIN_TIMESTAMP}')",
        )
        .unwrap_err();
        assert!(e.to_string().contains("inside a subquery"), "{e}");
    }

    #[test]
    fn ranges_are_half_open_and_cover_everything() {
        let r = key_ranges(1, 10, 4);
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0],
            KeyRange {
                lo: None,
                hi: Some(5),
                nulls: true
            }
        );
        assert_eq!(
            r[1],
            KeyRange {
                lo: Some(5),
                hi: Some(9),
                nulls: false
            }
        );
        assert_eq!(
            r[2],
            KeyRange {
                lo: Some(9),
                hi: None,
                nulls: false
            }
        );
        assert_eq!(key_ranges(3, 3, 100), vec![KeyRange::ALL]);
        // extreme keys do not overflow
        // a key spread over the whole type: at most MAX_KEY_RANGES ranges, contiguous,
        // covering everything
        let sparse = key_ranges(i64::MIN, i64::MAX, 2_000_000);
        assert!(sparse.len() as u64 <= MAX_KEY_RANGES, "{}", sparse.len());
        assert!(
            sparse.len() as u64 >= MAX_KEY_RANGES - 1,
            "{}",
            sparse.len()
        );
        assert_eq!((sparse[0].lo, sparse[0].nulls), (None, true));
        assert_eq!(sparse.last().unwrap().hi, None);
        assert!(sparse.windows(2).all(|w| w[0].hi == w[1].lo));
        // a dense span at the cap keeps its step
        assert_eq!(
            key_ranges(1, MAX_KEY_RANGES as i64, 1).len() as u64,
            MAX_KEY_RANGES
        );
        let wide = key_ranges(i64::MIN, i64::MAX, u64::MAX);
        assert_eq!((wide[0].lo, wide.last().unwrap().hi), (None, None));
    }

    #[test]
    fn wrap_keeps_comments_harmless() {
        let id = Ident::parse("k", "id").unwrap();
        let r = KeyRange {
            lo: Some(5),
            hi: Some(9),
            nulls: false,
        };
        let s = wrap("select * from t -- note\n;", "*", Some((&id, &r)), Some(10));
        assert_eq!(
            s,
            "SELECT * FROM (\nselect * from t -- note\n) AS pgp_src WHERE pgp_src.\"id\" >= 5 AND pgp_src.\"id\" < 9 LIMIT 10"
        );
    }
}
