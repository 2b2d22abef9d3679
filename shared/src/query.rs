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

/// The key a table's chunks are ranges of: a column of the query (`id`, any orderable
/// type), or the manifest's expression over the query's columns (`CONCAT(sha, '_',
/// issue_id)`), or several of either separated by commas (a composite key, compared
/// as a row). Stored as the manifest's text; the SQL is derived from it by
/// [`ChunkKey::parts`], which only ever renders a checked identifier or an expression
/// sqlparser parsed whole.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChunkKey {
    text: String,
    parts: Vec<String>,
}

impl TryFrom<String> for ChunkKey {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        ChunkKey::parse(&s)
    }
}

impl From<ChunkKey> for String {
    fn from(k: ChunkKey) -> String {
        k.text
    }
}

impl std::fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl ChunkKey {
    /// A key that is one column of the query.
    pub fn column(c: &Ident) -> ChunkKey {
        ChunkKey {
            text: c.as_str().to_string(),
            parts: vec![format!("pgp_src.{}", c.quoted())],
        }
    }

    /// A column name (as [`ChunkKey::column`]) or a comma-separated list of SQL
    /// expressions over the query's columns; anything that does not parse whole as
    /// expressions (a `;`, a dangling quote) is an error saying why.
    pub fn parse(text: &str) -> std::result::Result<ChunkKey, String> {
        if let Ok(c) = Ident::parse("key", text.trim()) {
            return Ok(ChunkKey::column(&c));
        }
        let err = |reason: String| format!("`{}` is {reason}", text.trim());
        let dialect = PostgreSqlDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(text)
            .map_err(|e| err(format!("not SQL expressions: {e}")))?;
        let exprs = parser
            .parse_comma_separated(Parser::parse_expr)
            .map_err(|e| err(format!("not SQL expressions: {e}")))?;
        if parser.peek_token().token != sqlparser::tokenizer::Token::EOF {
            return Err(err(format!(
                "not SQL expressions: unexpected `{}` after them",
                parser.peek_token().token
            )));
        }
        Ok(ChunkKey {
            text: text.trim().to_string(),
            parts: exprs.iter().map(|e| format!("({e})")).collect(),
        })
    }

    /// The SQL of each part of the key, over the wrapped query `pgp_src`.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The physical key: the row's location (`ctid`) in the one table the query reads,
    /// as the column [`PHYSICAL_KEY`] that [`with_row_location`] adds to the query.
    /// Chunks over it are ranges of the table's pages, read as TID range scans.
    pub fn physical() -> ChunkKey {
        ChunkKey::column(&Ident::parse("key", PHYSICAL_KEY).expect("a valid identifier"))
    }

    /// Whether this is [`ChunkKey::physical`]: ranges of row locations, which hold
    /// every row exactly once only when all chunks read one snapshot.
    pub fn is_physical(&self) -> bool {
        self.text == PHYSICAL_KEY
    }

    /// The column, when the key is one column of the query.
    pub fn as_column(&self) -> Option<Ident> {
        Ident::parse("key", &self.text).ok()
    }

    /// The key as one comparable SQL value: the part, or a row of the parts.
    fn row(&self) -> String {
        match self.parts.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(", ")),
        }
    }

    /// The SQL that is true for rows whose key has a NULL part (such rows are in no key
    /// range, only in the NULL range: a row comparison with a NULL is never true).
    pub fn is_null(&self) -> String {
        self.parts
            .iter()
            .map(|p| format!("{p} IS NULL"))
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// A value of a chunk key: each part as PostgreSQL's text of it (its output function
/// under pgp's session settings, which its input function reads back as the same
/// value). Spliced as untyped string literals, so PostgreSQL reads each with the
/// key part's own type and compares with that type's ordering. Records written when
/// keys were integers hold a number, which reads as the one-part key of its text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "BoundRepr")]
pub struct KeyBound(pub Vec<String>);

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum BoundRepr {
    Int(i64),
    Parts(Vec<String>),
}

impl From<BoundRepr> for KeyBound {
    fn from(r: BoundRepr) -> KeyBound {
        match r {
            BoundRepr::Int(i) => KeyBound(vec![i.to_string()]),
            BoundRepr::Parts(p) => KeyBound(p),
        }
    }
}

impl KeyBound {
    /// The bound as SQL: a string literal per part (standard-conforming: quotes
    /// doubled, backslashes literal; the session pins `standard_conforming_strings`).
    fn sql(&self) -> String {
        let lits: Vec<String> = self
            .0
            .iter()
            .map(|v| format!("'{}'", v.replace('\'', "''")))
            .collect();
        match lits.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(", ")),
        }
    }
}

impl std::fmt::Display for KeyBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A half-open key range `[lo, hi)`; `None` is unbounded. Rows with a NULL key (any
/// part NULL) belong to the range with `nulls`; a range without `keys` holds only them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    pub lo: Option<KeyBound>,
    pub hi: Option<KeyBound>,
    /// Whether rows with a NULL key belong to this range.
    pub nulls: bool,
    /// Whether rows with a non-NULL key in `[lo, hi)` belong to this range (false: the
    /// NULL range).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub keys: bool,
}

impl KeyRange {
    /// The whole table, NULL keys included.
    pub const ALL: KeyRange = KeyRange {
        lo: None,
        hi: None,
        nulls: true,
        keys: true,
    };

    /// The SQL condition on `key` (over the wrapped query).
    pub fn condition(&self, key: &ChunkKey) -> Option<String> {
        let k = key.row();
        if !self.keys {
            return Some(format!("({})", key.is_null()));
        }
        let mut parts = Vec::new();
        if let Some(lo) = &self.lo {
            parts.push(format!("{k} >= {}", lo.sql()));
        }
        if let Some(hi) = &self.hi {
            parts.push(format!("{k} < {}", hi.sql()));
        }
        if parts.is_empty() {
            return if self.nulls {
                None
            } else {
                Some(format!("NOT ({})", key.is_null()))
            };
        }
        let c = parts.join(" AND ");
        Some(if self.nulls {
            format!("(({c}) OR {})", key.is_null())
        } else {
            c
        })
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.keys {
            return f.write_str("null");
        }
        let lo = self
            .lo
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-inf".into());
        let hi = self
            .hi
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "+inf".into());
        write!(f, "[{lo}, {hi})")?;
        if self.nulls {
            f.write_str("+null")?;
        }
        Ok(())
    }
}

/// The most ranges a table is split into: past it, ranges hold more rows than asked.
/// (Ranges used to be cut by key width, where a sparse `bigint` key spread over the
/// type would have made trillions; they are now cut at sampled row ranks, so the cap
/// bounds the plan and the run record of a very large table.)
pub const MAX_KEY_RANGES: u64 = 10_000;

/// How a table's key splits were found (shown in the plan: it says how even the
/// ranges can be expected to be and what reading them cost the source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMethod {
    /// Fewer rows than one range holds: one range, no pass over the key.
    #[default]
    Fits,
    /// Every key sorted: exact ranges.
    Sorted,
    /// The key column's histogram in `pg_stats`, current and fine enough.
    Histogram,
    /// A page sample of the key column's table (`TABLESAMPLE SYSTEM`).
    PageSample,
    /// A random sample of the query's rows (one pass over them).
    RandomSample,
    /// Row locations cut into equal ranges of the table's pages.
    Pages,
}

impl std::fmt::Display for SplitMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SplitMethod::Fits => "fits one range",
            SplitMethod::Sorted => "every key sorted",
            SplitMethod::Histogram => "pg_stats histogram",
            SplitMethod::PageSample => "TABLESAMPLE SYSTEM of the key's table",
            SplitMethod::RandomSample => "random sample of the query's rows",
            SplitMethod::Pages => "equal ranges of the table's pages",
        })
    }
}

/// Where a table's key splits: sorted, distinct interior bounds, each starting a
/// range, whether some row has a NULL key, and whether any row ever can (false for
/// the physical key: a row always has a location).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySplits {
    pub bounds: Vec<KeyBound>,
    pub nulls: bool,
    pub nullable: bool,
    pub method: SplitMethod,
}

impl KeySplits {
    /// Half-open ranges between the bounds, open at both ends (rows inserted after
    /// planning with a key beyond the bounds still land somewhere), so that together
    /// they hold every possible row exactly once. NULL keys get a range of their own
    /// when the table has some, else they ride with the first range (a row that gets
    /// a NULL key after planning is still read).
    pub fn ranges(&self) -> Vec<KeyRange> {
        if self.bounds.is_empty() {
            return vec![KeyRange::ALL];
        }
        let mut out = Vec::with_capacity(self.bounds.len() + 2);
        if self.nulls {
            out.push(KeyRange {
                lo: None,
                hi: None,
                nulls: true,
                keys: false,
            });
        }
        let mut lo = None;
        for b in &self.bounds {
            out.push(KeyRange {
                lo: lo.take(),
                hi: Some(b.clone()),
                nulls: self.nullable && !self.nulls && out.is_empty(),
                keys: true,
            });
            lo = Some(b.clone());
        }
        out.push(KeyRange {
            lo,
            hi: None,
            nulls: false,
            keys: true,
        });
        out
    }
}

/// The column [`with_row_location`] adds: the row's `ctid`.
pub const PHYSICAL_KEY: &str = "pgp_ctid";

/// `query` with the location of each row in the one table it reads added as a last
/// column, [`PHYSICAL_KEY`] (`… , t.ctid AS pgp_ctid FROM t …`), so that chunks can be
/// ranges of the table's pages. Only for a query whose every row comes from one row
/// of one table: a plain `SELECT` from one table, without joins, `DISTINCT`,
/// `GROUP BY`, `HAVING`, `WINDOW`, `LIMIT`, `WITH` or set operations (PostgreSQL
/// refuses an aggregate next to `ctid`, and the planner's check refuses window
/// functions). The error says which of these the query has. The query's own text is
/// kept byte for byte: the column is inserted before its top-level `FROM`, found by
/// sqlparser's tokenizer, never re-rendered from the syntax tree.
pub fn with_row_location(query: &str) -> std::result::Result<String, String> {
    use sqlparser::ast::{GroupByExpr, TableFactor};
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let q = strip_terminator(query);
    let dialect = PostgreSqlDialect {};
    let stmts = Parser::parse_sql(&dialect, q).map_err(|e| format!("it does not parse: {e}"))?;
    let [Statement::Query(query)] = stmts.as_slice() else {
        return Err("it is not one SELECT".into());
    };
    let refuse = |what: &str| Err(format!("it has {what}"));
    if query.with.is_some() {
        return refuse("a WITH clause");
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return refuse("a LIMIT, OFFSET or FETCH");
    }
    if !query.locks.is_empty() {
        return refuse("a locking clause");
    }
    let SetExpr::Select(s) = query.body.as_ref() else {
        return refuse("a set operation or a nested query at its top");
    };
    if s.distinct.is_some() {
        return refuse("DISTINCT");
    }
    match &s.group_by {
        GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty() => {}
        _ => return refuse("GROUP BY"),
    }
    if s.having.is_some() {
        return refuse("HAVING");
    }
    if !s.named_window.is_empty() {
        return refuse("a WINDOW clause");
    }
    if s.into.is_some() {
        return refuse("INTO");
    }
    let [from] = s.from.as_slice() else {
        return Err(format!(
            "it reads {} FROM items, not one table",
            s.from.len()
        ));
    };
    if !from.joins.is_empty() {
        return refuse("a join");
    }
    let TableFactor::Table {
        name,
        alias,
        args: None,
        sample: None,
        ..
    } = &from.relation
    else {
        return Err("it does not read a table (a subquery or a function in FROM)".into());
    };
    let qualifier = match alias {
        Some(a) => a.name.to_string(),
        None => name.to_string(),
    };
    // The top-level FROM: the first FROM keyword outside parentheses that does not
    // belong to `IS [NOT] DISTINCT FROM`.
    let tokens = Tokenizer::new(&dialect, q)
        .tokenize_with_location()
        .map_err(|e| format!("it does not tokenize: {e}"))?;
    let mut depth = 0i32;
    let mut previous: Option<&Token> = None;
    let mut at = None;
    for t in &tokens {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w) if depth == 0 && w.keyword == Keyword::FROM => {
                let after_distinct =
                    matches!(previous, Some(Token::Word(p)) if p.keyword == Keyword::DISTINCT);
                if !after_distinct {
                    at = Some(t.span.start);
                    break;
                }
            }
            _ => {}
        }
        if !matches!(t.token, Token::Whitespace(_)) {
            previous = Some(&t.token);
        }
    }
    let at = at.ok_or("its FROM was not found")?;
    // Line and column (1-based, in characters) to a byte offset.
    let line_start = q
        .split_inclusive('\n')
        .take(at.line.saturating_sub(1) as usize)
        .map(str::len)
        .sum::<usize>();
    let offset = line_start
        + q[line_start..]
            .char_indices()
            .nth(at.column.saturating_sub(1) as usize)
            .map(|(i, _)| i)
            .ok_or("its FROM was not found")?;
    Ok(format!(
        "{}, {qualifier}.ctid AS {PHYSICAL_KEY}\n{}",
        &q[..offset],
        &q[offset..]
    ))
}

/// Wrap `query` so that it returns `projection` of its rows, within `range` of `key`,
/// and at most `limit` rows. The query text sits on its own lines so a trailing `--`
/// comment cannot swallow the closing parenthesis.
pub fn wrap(
    query: &str,
    projection: &str,
    key: Option<(&ChunkKey, &KeyRange)>,
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

    fn b(v: &str) -> KeyBound {
        KeyBound(vec![v.to_string()])
    }

    #[test]
    fn ranges_are_half_open_and_cover_everything() {
        let splits = KeySplits {
            bounds: vec![b("5"), b("9")],
            nulls: false,
            nullable: true,
            ..Default::default()
        };
        let r = splits.ranges();
        let id = ChunkKey::parse("id").unwrap();
        let conds: Vec<Option<String>> = r.iter().map(|r| r.condition(&id)).collect();
        assert_eq!(
            conds,
            [
                "((pgp_src.\"id\" < '5') OR pgp_src.\"id\" IS NULL)",
                "pgp_src.\"id\" >= '5' AND pgp_src.\"id\" < '9'",
                "pgp_src.\"id\" >= '9'",
            ]
            .map(|c| Some(c.to_string()))
        );
        assert_eq!(KeySplits::default().ranges(), vec![KeyRange::ALL]);
        // With NULL keys: a range of their own, and the others hold none.
        let apart = KeySplits {
            bounds: vec![b("m")],
            nulls: true,
            nullable: true,
            ..Default::default()
        }
        .ranges();
        let conds: Vec<String> = apart.iter().map(|r| r.condition(&id).unwrap()).collect();
        assert_eq!(
            conds,
            [
                "(pgp_src.\"id\" IS NULL)",
                "pgp_src.\"id\" < 'm'",
                "pgp_src.\"id\" >= 'm'",
            ]
        );
        assert_eq!(apart[0].to_string(), "null");
        assert_eq!(apart[2].to_string(), "[m, +inf)");
        // A key that is never NULL (a row location): no `IS NULL` in any range, which
        // would keep PostgreSQL from a TID range scan.
        let physical = KeySplits {
            bounds: vec![b("(10,0)")],
            ..Default::default()
        }
        .ranges();
        let k = ChunkKey::physical();
        assert!(k.is_physical());
        let conds: Vec<String> = physical.iter().map(|r| r.condition(&k).unwrap()).collect();
        assert_eq!(
            conds,
            [
                "pgp_src.\"pgp_ctid\" < '(10,0)'",
                "pgp_src.\"pgp_ctid\" >= '(10,0)'"
            ]
        );
    }

    #[test]
    fn the_row_location_is_added_before_the_top_level_from_and_the_text_kept() {
        let cases = [
            (
                "SELECT * FROM t",
                "SELECT * , t.ctid AS pgp_ctid\nFROM t",
            ),
            (
                "select a, extract(year from b) AS y, a is distinct from b AS d\n  -- a comment\nfrom public.\"Tab\" x where a > 'FROM' ;",
                "select a, extract(year from b) AS y, a is distinct from b AS d\n  -- a comment\n, x.ctid AS pgp_ctid\nfrom public.\"Tab\" x where a > 'FROM'",
            ),
            (
                "SELECT 'ünï' AS u, (SELECT max(id) FROM u) AS m FROM public.t WHERE id IN (SELECT id FROM v)",
                "SELECT 'ünï' AS u, (SELECT max(id) FROM u) AS m , public.t.ctid AS pgp_ctid\nFROM public.t WHERE id IN (SELECT id FROM v)",
            ),
        ];
        for (q, want) in cases {
            assert_eq!(with_row_location(q).unwrap(), want, "{q}");
        }
        for (q, why) in [
            ("SELECT a FROM t JOIN u ON t.id = u.id", "a join"),
            ("SELECT a FROM t, u", "2 FROM items"),
            ("SELECT DISTINCT a FROM t", "DISTINCT"),
            ("SELECT a, count(*) FROM t GROUP BY a", "GROUP BY"),
            ("SELECT a FROM t LIMIT 5", "LIMIT"),
            ("WITH x AS (SELECT 1) SELECT * FROM t", "WITH"),
            ("SELECT a FROM t UNION SELECT a FROM u", "set operation"),
            ("SELECT * FROM (SELECT a FROM t) s", "does not read a table"),
            (
                "SELECT * FROM generate_series(1, 3) g",
                "does not read a table",
            ),
            ("SELECT 1", "0 FROM items"),
        ] {
            let e = with_row_location(q).unwrap_err();
            assert!(e.contains(why), "{q}: {e}");
        }
    }

    #[test]
    fn composite_and_expression_keys_compare_as_rows_and_literals_are_quoted() {
        let k = ChunkKey::parse("CONCAT(sha, '_', issue_id), id").unwrap();
        assert_eq!(k.parts(), ["(CONCAT(sha, '_', issue_id))", "(id)"]);
        let r = KeyRange {
            lo: Some(KeyBound(vec!["it's".into(), "7".into()])),
            hi: None,
            nulls: false,
            keys: true,
        };
        assert_eq!(
            r.condition(&k).unwrap(),
            "((CONCAT(sha, '_', issue_id)), (id)) >= ('it''s', '7')"
        );
        for bad in ["id; DROP TABLE t", "CONCAT(a", "a b c", "'unterminated"] {
            assert!(ChunkKey::parse(bad).is_err(), "{bad}");
        }
        // Stored as the manifest's text, read back the same.
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<ChunkKey>(&json).unwrap(), k);
        // Run records from integer-keyed days still read.
        let old: KeyRange = serde_json::from_str(r#"{"lo":5,"hi":null,"nulls":false}"#).unwrap();
        assert_eq!(old.lo, Some(b("5")));
        assert!(old.keys);
    }

    #[test]
    fn wrap_keeps_comments_harmless() {
        let id = ChunkKey::parse("id").unwrap();
        let r = KeyRange {
            lo: Some(b("5")),
            hi: Some(b("9")),
            nulls: false,
            keys: true,
        };
        let s = wrap("select * from t -- note\n;", "*", Some((&id, &r)), Some(10));
        assert_eq!(
            s,
            "SELECT * FROM (\nselect * from t -- note\n) AS pgp_src WHERE pgp_src.\"id\" >= '5' AND pgp_src.\"id\" < '9' LIMIT 10"
        );
    }
}
